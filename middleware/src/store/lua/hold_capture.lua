-- Capture at admission from a prepaid balance: take a fixed price and append its usage event
-- in one step (no mandate, no plan; totals.lua and holds.lua are prepended). void_hold.lua
-- undoes it when the request is not served.
-- KEYS[1] account hash   KEYS[2] holds hash   KEYS[3] payer block key   KEYS[4] usage event stream
-- KEYS[5] payer's daily aggregates   KEYS[6] bucket's daily aggregates   KEYS[7] bucket's
-- per-payer day totals   KEYS[8] settled marker of this reservation
-- ARGV[1] reservation id   ARGV[2] currency   ARGV[3] amount (minor)   ARGV[4] marker kept (ms)
-- ARGV[5] N = number of event field pairs   ARGV[6 .. 5+2N] event field/value pairs
-- ARGV[6+2N ..] aggregate field/increment pairs (the amount's included)
-- Returns {'captured', event id, balance left} | {'insufficient', '', balance} | {'blocked', '', 0}
if redis.call('EXISTS', KEYS[3]) == 1 then
  return {'blocked', '', 0}
end
local amount = tonumber(ARGV[3])
local bal = tonumber(redis.call('HGET', KEYS[1], 'bal:' .. ARGV[2]) or '0')
if bal < amount then
  -- Short: first give back holds whose holder died without settling (expired).
  local t = redis.call('TIME')
  sweep_holds(KEYS[1], KEYS[2], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  bal = tonumber(redis.call('HGET', KEYS[1], 'bal:' .. ARGV[2]) or '0')
  if bal < amount then
    return {'insufficient', '', bal}
  end
end
redis.call('HINCRBY', KEYS[1], 'bal:' .. ARGV[2], string.format('%d', -amount))
redis.call('HINCRBY', KEYS[1], 'captured:' .. ARGV[2], string.format('%d', amount))
local fields = event_fields(ARGV, 5)
local id = record_usage(KEYS[4], KEYS[5], KEYS[6], KEYS[7], fields, ARGV, 6 + 2 * tonumber(ARGV[5]), 1)
redis.call('SET', KEYS[8], id .. '|' .. ARGV[3] .. '|0|' .. ARGV[2], 'PX', ARGV[4])
return {'captured', id, bal - amount}
