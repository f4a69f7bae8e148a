-- Claim an admin refund's Idempotency-Key for one request (its fingerprint: the charge, the
-- amount asked and the reason), in the key's own slot, so that the same key is never used for
-- two different refunds whatever buckets their charges are in. A claim is kept as long as the
-- refunds' state (400 days). The refund itself is idempotent per key in refund.lua: a claim
-- whose refund never ran (a crash in between) is completed by a retry with the same request.
-- KEYS[1] the claim   ARGV[1] fingerprint   ARGV[2] keep (ms)
-- Returns 1 when the key is (now or already) this request's, 0 when another's.
local cur = redis.call('GET', KEYS[1])
if cur then
  return cur == ARGV[1] and 1 or 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
