-- Record a call covered by a plan: one usage event (amount 0), daily aggregates, once.
-- KEYS[1] settled marker of this reservation   KEYS[2] usage event stream
-- KEYS[3] payer's daily aggregates   KEYS[4] bucket's daily aggregates
-- KEYS[5] bucket's per-payer day totals (payer listing)   KEYS[6] the subscription hash
-- KEYS[7] the payer's account hash (the balance is answered, as for any capture)
-- ARGV[1] units to count against the period (unit plans; 0 for call plans, counted at the hold)
-- ARGV[2] N = number of event field pairs   ARGV[3 .. 2+2N] event fields   ARGV[3+2N ..] aggregate pairs
-- Returns {'captured', event id, balance} | {'not_held', '', 0} (released earlier)
local fields = event_fields(ARGV, 2)
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
local id = record_usage(KEYS[2], KEYS[3], KEYS[4], KEYS[5], fields, ARGV, 3 + 2 * tonumber(ARGV[2]), 1, true)
redis.call('SET', KEYS[1], id, 'PX', SETTLED_KEEP_MS)
return {'captured', id, balance}
