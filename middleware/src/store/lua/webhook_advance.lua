-- One webhook dispatcher step on a bucket (store/webhook.rs, OutboxAdvance): the messages made
-- from the ledger events after the cursor, the dispatcher's state changes and the new cursor,
-- written together -- or nothing, when another dispatcher moved the cursor first.
-- KEYS[1] the bucket's dispatcher state (hash; '@cursor' is the ledger cursor)
-- KEYS[2] the bucket's outbox (stream)
-- KEYS[3] the bucket's scheduled messages (hash: id -> JSON)   KEYS[4] their times (zset)
-- ARGV: expected cursor ('' for none), new cursor, nset, (key, value)*, nclear, key*,
--       nmsg, (id, kind, payer, time_ms, body)*, nsched, (at ms, id, JSON)*, nunsched, id*
local cur = redis.call('HGET', KEYS[1], '@cursor')
if (cur or '') ~= ARGV[1] then
  return 0
end
local i = 3
local nset = tonumber(ARGV[i]); i = i + 1
for _ = 1, nset do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]); i = i + 2
end
local nclear = tonumber(ARGV[i]); i = i + 1
for _ = 1, nclear do
  redis.call('HDEL', KEYS[1], ARGV[i]); i = i + 1
end
local nmsg = tonumber(ARGV[i]); i = i + 1
for _ = 1, nmsg do
  redis.call('XADD', KEYS[2], '*', 'id', ARGV[i], 'kind', ARGV[i + 1], 'payer', ARGV[i + 2],
    'time_ms', ARGV[i + 3], 'body', ARGV[i + 4])
  i = i + 5
end
local nsched = tonumber(ARGV[i]); i = i + 1
for _ = 1, nsched do
  redis.call('HSET', KEYS[3], ARGV[i + 1], ARGV[i + 2])
  redis.call('ZADD', KEYS[4], ARGV[i], ARGV[i + 1])
  i = i + 3
end
local nunsched = tonumber(ARGV[i]); i = i + 1
for _ = 1, nunsched do
  redis.call('HDEL', KEYS[3], ARGV[i])
  redis.call('ZREM', KEYS[4], ARGV[i])
  i = i + 1
end
redis.call('HSET', KEYS[1], '@cursor', ARGV[2])
return 1
