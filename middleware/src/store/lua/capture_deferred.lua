-- x402 deferred: capture a held authorization (spend + exactly one usage event, as capture.lua)
-- and queue its settlement, atomically: one job per captured authorization.
-- KEYS[1] state key   KEYS[2] usage event stream   KEYS[3] payer's daily aggregates
-- KEYS[4] bucket's daily aggregates   KEYS[5] jobs hash   KEYS[6] due sorted set
-- KEYS[7] bucket's per-payer day totals (payer listing)
-- ARGV[1] reservation id   ARGV[2] remember-spent-until (unix ms)   ARGV[3] payer
-- ARGV[4] job body (JSON)   ARGV[5] N = number of event field pairs
-- ARGV[6 .. 5+2N] event field/value pairs   ARGV[6+2N ..] aggregate field/increment pairs
-- Returns: {'captured', event id} | {'duplicate', event id} | {'conflict', ''}
local cur = redis.call('GET', KEYS[1])
local spent_prefix = 'spent:' .. ARGV[1] .. ':'
if cur and string.sub(cur, 1, #spent_prefix) == spent_prefix then
  return {'duplicate', string.sub(cur, #spent_prefix + 1)}
end
if cur and cur ~= 'held:' .. ARGV[1] then
  return {'conflict', ''}
end
local n = tonumber(ARGV[5])
local fields = {}
for i = 6, 5 + 2 * n do
  fields[#fields + 1] = ARGV[i]
end
local id = redis.call('XADD', KEYS[2], '*', unpack(fields))
for i = 6 + 2 * n, AGGREGATES and #ARGV or 0, 2 do
  redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1])
  redis.call('HINCRBY', KEYS[4], ARGV[i], ARGV[i + 1])
end
payer_totals(KEYS[7], field_of(fields, 'payer'), field_of(fields, 'currency'), field_of(fields, 'amount_minor'))
for _, k in ipairs(AGGREGATES and {KEYS[3], KEYS[4]} or {}) do
  if redis.call('PTTL', k) < 0 then
    redis.call('PEXPIRE', k, 400 * 86400 * 1000)
  end
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local keep = math.max(tonumber(ARGV[2]) - now_ms, 1000)
redis.call('SET', KEYS[1], spent_prefix .. id, 'PX', keep)
-- The job is keyed by the event's stream id: the two are joined one to one.
redis.call('HSET', KEYS[5], id, cjson.encode({payer = ARGV[3], body = ARGV[4], attempts = 0, status = 'queued', error = ''}))
redis.call('ZADD', KEYS[6], now_ms, id)
return {'captured', id}
