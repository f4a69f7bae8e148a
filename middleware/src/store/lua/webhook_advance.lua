-- One webhook dispatcher step on a bucket (store/webhook.rs, OutboxAdvance): the messages made
-- from the ledger events after the cursor, the dispatcher's state changes and the new cursor,
-- written together -- or nothing, when another dispatcher moved the cursor first.
-- KEYS[1] the bucket's dispatcher state (hash; '@cursor' is the ledger cursor)
-- KEYS[2] the bucket's outbox (stream)
-- ARGV: expected cursor ('' for none), new cursor, nset, (key, value)*, nclear, key*,
--       nmsg, (id, kind, payer, time_ms, body)*
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
redis.call('HSET', KEYS[1], '@cursor', ARGV[2])
return 1
