-- The end of a delivery attempt (store/webhook.rs, DeliveryFinish): move the position past the
-- message, schedule a retry, or keep a failure and move past it; then release the claim.
-- Refused (0) when the claim is no longer the holder's or the position moved.
-- KEYS[1] the endpoint's position in the bucket (hash)
-- KEYS[2] the bucket's failed deliveries (list, newest first)
-- ARGV: holder, expected done ('' for none), outcome ('past' | 'retry' | 'failed'), the
--       message's seq, attempts, next ms, failure (JSON)
local p = redis.call('HMGET', KEYS[1], 'done', 'lock_by')
if (p[1] or '') ~= ARGV[2] or p[2] ~= ARGV[1] then
  return 0
end
if ARGV[3] == 'retry' then
  redis.call('HSET', KEYS[1], 'attempts', ARGV[5], 'next_ms', ARGV[6])
else
  if ARGV[3] == 'failed' then
    redis.call('LPUSH', KEYS[2], ARGV[7])
  end
  redis.call('HSET', KEYS[1], 'done', ARGV[4], 'attempts', 0, 'next_ms', 0)
end
redis.call('HDEL', KEYS[1], 'lock_by', 'lock_until')
return 1
