-- Resolve a failed x402 settlement: forget it, and unblock its payer when none of the payer's
-- other settlements (in this bucket, where all of them live) is still failed.
-- KEYS[1] jobs hash   KEYS[2] failed set   KEYS[3] payer block key
-- ARGV[1] job (stream) id   ARGV[2] payer
-- Returns 1 if resolved, 0 if no such failed settlement.
if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local raw = redis.call('HGET', KEYS[1], id)
  if raw and cjson.decode(raw).payer == ARGV[2] then
    return 1
  end
end
redis.call('DEL', KEYS[3])
return 1
