-- Buy one period of a plan with a subscribe receipt, exactly once, and record the purchase
-- as one usage event (revenue). owner.lua and totals.lua are prepended.
-- KEYS[1] receipt state key   KEYS[2] subscription hash   KEYS[3] usage event stream
-- KEYS[4] payer's daily aggregates   KEYS[5] bucket's daily aggregates
-- KEYS[6] bucket's per-payer day totals (payer listing)
-- ARGV[1] now (gateway clock, unix ms)   ARGV[2] period (ms)   ARGV[3] calls (-1: a pass)
-- ARGV[4] remember the receipt until (unix ms)   ARGV[5] N = event field pairs
-- ARGV[6 .. 5+2N] event fields   ARGV[6+2N ..] aggregate pairs
-- A period still running is extended by one period and its calls added to; otherwise a new
-- period starts now.
-- Returns {'subscribed', event id, period end} | {'duplicate', event id, period end} | {'used', '', 0}
if OWNED_BY_OTHER then
  return {'used', '', 0}
end
local cur = redis.call('GET', KEYS[1])
if cur then
  local id = string.match(cur, '^spent:sub:(.+)$')
  if id then
    return {'duplicate', id, tonumber(redis.call('HGET', KEYS[2], 'end') or '0')}
  end
  return {'used', '', 0}
end
local now, period, calls = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local s = redis.call('HMGET', KEYS[2], 'end', 'calls')
local period_end
if s[1] and tonumber(s[1]) > now then
  period_end = tonumber(s[1]) + period
  local total = -1
  if calls >= 0 and tonumber(s[2]) >= 0 then
    total = tonumber(s[2]) + calls
  end
  redis.call('HSET', KEYS[2], 'end', string.format('%d', period_end), 'calls', string.format('%d', total))
else
  period_end = now + period
  redis.call('HSET', KEYS[2], 'start', ARGV[1], 'end', string.format('%d', period_end),
    'calls', string.format('%d', calls), 'used', '0')
end
redis.call('PEXPIREAT', KEYS[2], string.format('%d', period_end + 35 * 86400 * 1000))
local fields = event_fields(ARGV, 5)
local id = record_usage(KEYS[3], KEYS[4], KEYS[5], KEYS[6], fields, ARGV, 6 + 2 * tonumber(ARGV[5]), 1)
redis.call('SET', KEYS[1], 'spent:sub:' .. id, 'PXAT', ARGV[4])
return {'subscribed', id, period_end}
