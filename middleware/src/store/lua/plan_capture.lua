-- Record a call covered by a plan: one usage event (amount 0), daily aggregates, once.
-- KEYS[1] settled marker of this reservation   KEYS[2] usage event stream
-- KEYS[3] payer's daily aggregates   KEYS[4] bucket's daily aggregates
-- KEYS[5] bucket's per-payer day totals (payer listing)   KEYS[6] the subscription hash
-- KEYS[7] the payer's account hash (the balance is answered, as for any capture)
-- ARGV[1] units to count against the period (unit plans; 0 for call plans, counted at the hold)
-- ARGV[2] N = number of event field pairs   ARGV[3 .. 2+2N] event fields   ARGV[3+2N ..] aggregate pairs
-- Returns {'captured', event id, balance} | {'not_held', '', 0} (released earlier)
local n = tonumber(ARGV[2])
local fields = {}
for i = 3, 2 + 2 * n do
  fields[#fields + 1] = ARGV[i]
end
local balance = tonumber(redis.call('HGET', KEYS[7], 'bal:' .. (field_of(fields, 'currency') or '')) or '0')
local done = redis.call('GET', KEYS[1])
if done then
  if done == 'released' then
    return {'not_held', '', 0}
  end
  return {'captured', done, balance}
end
if tonumber(ARGV[1]) > 0 then
  redis.call('HINCRBY', KEYS[6], 'used', ARGV[1])
end
local id = redis.call('XADD', KEYS[2], '*', unpack(fields))
for _, k in ipairs(AGGREGATES and {KEYS[3], KEYS[4]} or {}) do
  for i = 3 + 2 * n, #ARGV, 2 do
    redis.call('HINCRBY', k, ARGV[i], ARGV[i + 1])
  end
  if redis.call('PTTL', k) < 0 then
    redis.call('PEXPIRE', k, 400 * 86400 * 1000)
  end
end
payer_totals(KEYS[5], field_of(fields, 'payer'), nil, nil)
redis.call('SET', KEYS[1], id, 'PX', SETTLED_KEEP_MS)
return {'captured', id, balance}
