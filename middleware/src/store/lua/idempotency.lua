-- A payer's request Idempotency-Key, claimed and finished atomically (never read-modify-write
-- from Rust). One hash per key, in the payer's bucket:
--   fp = request fingerprint, token = the claiming request's token,
--   event / at = the usage event id and its time (ms) once served and charged.
-- KEYS[1] the key's hash
-- ARGV[1] 'claim':  ARGV[2] fingerprint  ARGV[3] token  ARGV[4] ttl ms
--   Returns {'claimed'} | {'in_flight'} | {'done', event id, time ms} | {'mismatch'}
-- ARGV[1] 'done':   ARGV[2] token  ARGV[3] event id  ARGV[4] time ms
-- ARGV[1] 'forget': ARGV[2] token
--   Both change the record only while it is still the token's claim in flight; return 1 if so.
local op = ARGV[1]
if op == 'claim' then
  local cur = redis.call('HMGET', KEYS[1], 'fp', 'event', 'at')
  if cur[1] then
    if cur[1] ~= ARGV[2] then
      return {'mismatch'}
    end
    if cur[2] then
      return {'done', cur[2], cur[3]}
    end
    return {'in_flight'}
  end
  redis.call('HSET', KEYS[1], 'fp', ARGV[2], 'token', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {'claimed'}
end
local cur = redis.call('HMGET', KEYS[1], 'token', 'event')
if cur[1] ~= ARGV[2] or cur[2] then
  return 0
end
if op == 'done' then
  -- The TTL set at the claim stays: the key is remembered for its full lifetime from first use.
  redis.call('HSET', KEYS[1], 'event', ARGV[3], 'at', ARGV[4])
  return 1
end
if op == 'forget' then
  redis.call('DEL', KEYS[1])
  return 1
end
return redis.error_reply('unknown op')
