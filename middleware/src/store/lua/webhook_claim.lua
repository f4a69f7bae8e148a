-- Claim an endpoint's delivery in a bucket and read what follows its position
-- (store/webhook.rs, DeliveryClaim). Nil: another holder's claim is live, or the next message
-- waits for its retry time.
-- KEYS[1] the endpoint's position in the bucket (hash: done, attempts, next_ms, lock_by,
--         lock_until)
-- KEYS[2] the bucket's outbox (stream)
-- ARGV: holder, now ms, lock ms, max messages
local p = redis.call('HMGET', KEYS[1], 'done', 'attempts', 'next_ms', 'lock_by', 'lock_until')
local done = p[1] or ''
local attempts = tonumber(p[2] or '0')
local now = tonumber(ARGV[2])
if tonumber(p[5] or '0') > now and p[4] ~= ARGV[1] then
  return false
end
if attempts > 0 and tonumber(p[3] or '0') > now then
  return false
end
local from = '-'
if done ~= '' then
  from = '(' .. done
end
local msgs = redis.call('XRANGE', KEYS[2], from, '+', 'COUNT', tonumber(ARGV[4]))
if #msgs > 0 then
  redis.call('HSET', KEYS[1], 'lock_by', ARGV[1], 'lock_until', now + tonumber(ARGV[3]))
end
return {done, attempts, msgs}
