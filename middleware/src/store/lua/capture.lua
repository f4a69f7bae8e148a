-- Capture a held receipt and append exactly one usage event, atomically (mandate.lua is
-- prepended).
-- KEYS[1] receipt state key   KEYS[2] usage event stream
-- KEYS[3] payer's daily aggregates   KEYS[4] bucket's daily aggregates (all payers)
-- KEYS[5] bucket's per-payer day totals (payer listing)
-- with a mandate: KEYS[6] window hash (the event's amount_minor is spent in it)
-- ARGV[1] reservation id      ARGV[2] remember-spent-until (unix ms)
-- ARGV[3] N = number of event field pairs   ARGV[4 .. 3+2N] event field/value pairs
-- ARGV[4+2N ..] aggregate field/increment pairs
-- Returns: {'captured', event id} | {'duplicate', event id} | {'conflict', ''}
local cur = redis.call('GET', KEYS[1])
local spent_prefix = 'spent:' .. ARGV[1] .. ':'
if cur and string.sub(cur, 1, #spent_prefix) == spent_prefix then
  -- This reservation was captured already: settling twice must not append twice.
  return {'duplicate', string.sub(cur, #spent_prefix + 1)}
end
if cur and cur ~= 'held:' .. ARGV[1] then
  -- Another request holds or spent this receipt (only possible if our hold expired).
  return {'conflict', ''}
end
local fields = event_fields(ARGV, 3)
local id = record_usage(KEYS[2], KEYS[3], KEYS[4], KEYS[5], fields, ARGV, 4 + 2 * tonumber(ARGV[3]), 1)
if #KEYS >= 6 then
  mandate_settle(KEYS[6], ARGV[1], tonumber(field_of(fields, 'amount_minor') or '0'))
end
-- Remember the spent receipt until its exp + skew (Redis clock), at least one second.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local keep = math.max(tonumber(ARGV[2]) - now_ms, 1000)
redis.call('SET', KEYS[1], spent_prefix .. id, 'PX', keep)
return {'captured', id}
