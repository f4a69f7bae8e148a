-- Capture the actual charge of a held request: the hold returns to the balance and the charge
-- is taken from it (never below zero), one usage event is appended and the payer's daily
-- aggregates are updated -- atomically.
-- KEYS[1] account hash   KEYS[2] holds hash   KEYS[3] usage event stream
-- KEYS[4] payer's daily aggregates   KEYS[5] bucket's daily aggregates (all payers)
-- KEYS[6] settled marker of this reservation (kept SETTLED_KEEP_MS: a retried capture whose first reply
--         was lost learns the outcome instead of guessing)
-- KEYS[7] bucket's per-payer day totals (payer listing)
-- with a mandate: KEYS[8] window hash (the charge never exceeds the window's room; it is
--         spent there) -- mandate.lua is prepended
-- ARGV[1] reservation id   ARGV[2] actual charge (minor)   ARGV[3] aggregate field for the amount
-- ARGV[4] N = number of event field pairs   ARGV[5 .. 4+2N] event field/value pairs
-- ARGV[5+2N ..] aggregate field/increment pairs
-- Returns {'captured', event id, charged, uncharged, balance} | {'not_held', '', 0, 0, balance}
local done = redis.call('GET', KEYS[6])
if done then
  local id, charged, uncharged, cur = string.match(done, '^([^|]+)|(%d+)|(%d+)|(.+)$')
  local now_bal = tonumber(redis.call('HGET', KEYS[1], 'bal:' .. cur) or '0')
  return {'captured', id, tonumber(charged), tonumber(uncharged), now_bal}
end
local h = redis.call('HGET', KEYS[2], ARGV[1])
if not h then
  return {'not_held', '', 0, 0, 0}
end
local cur, held = string.match(h, '^([^|]+)|(%d+)|')
held = tonumber(held)
local bal = tonumber(redis.call('HGET', KEYS[1], 'bal:' .. cur) or '0')
local charge = tonumber(ARGV[2])
local uncharged = 0
if #KEYS >= 8 then
  local budget = tonumber(redis.call('HGET', KEYS[8], 'budget') or '0')
  local room = math.max(mandate_room(KEYS[8], budget, mandate_now(), 'h:' .. ARGV[1]), 0)
  if charge > room then
    uncharged = charge - room
    charge = room
  end
end
if charge > held + bal then
  -- Usage beyond the hold is taken from the balance as far as it goes; the rest is recorded
  -- as uncharged, never as a negative balance.
  uncharged = uncharged + charge - held - bal
  charge = held + bal
end
redis.call('HINCRBY', KEYS[1], 'held:' .. cur, string.format('%d', -held))
redis.call('HINCRBY', KEYS[1], 'bal:' .. cur, string.format('%d', held - charge))
redis.call('HINCRBY', KEYS[1], 'captured:' .. cur, string.format('%d', charge))
redis.call('HDEL', KEYS[2], ARGV[1])
if #KEYS >= 8 then
  mandate_settle(KEYS[8], ARGV[1], charge)
end
local n = tonumber(ARGV[4])
local fields = {}
for i = 5, 4 + 2 * n do
  fields[#fields + 1] = ARGV[i]
end
fields[#fields + 1] = 'amount_minor'
fields[#fields + 1] = tostring(charge)
fields[#fields + 1] = 'uncharged_minor'
fields[#fields + 1] = tostring(uncharged)
local id = redis.call('XADD', KEYS[3], '*', unpack(fields))
for _, k in ipairs(AGGREGATES and {KEYS[4], KEYS[5]} or {}) do
  redis.call('HINCRBY', k, ARGV[3], string.format('%d', charge))
  for i = 5 + 2 * n, #ARGV, 2 do
    redis.call('HINCRBY', k, ARGV[i], ARGV[i + 1])
  end
  if redis.call('PTTL', k) < 0 then
    redis.call('PEXPIRE', k, 400 * 86400 * 1000)
  end
end
payer_totals(KEYS[7], field_of(fields, 'payer') or '', cur, string.format('%d', charge))
redis.call('SET', KEYS[6], id .. '|' .. string.format('%d', charge) .. '|' .. string.format('%d', uncharged) .. '|' .. cur, 'PX', SETTLED_KEEP_MS)
return {'captured', id, charge, uncharged, bal + held - charge}
