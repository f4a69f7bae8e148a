-- Hold an amount of a payer's prepaid balance for one request, atomically (mandate.lua and
-- holds.lua are prepended).
-- KEYS[1] account hash   KEYS[2] holds hash   KEYS[3] payer block key
-- with a mandate: KEYS[4] window hash   KEYS[5] revoked marker   KEYS[6] payer's mandate index
-- ARGV[1] reservation id   ARGV[2] currency   ARGV[3] amount (minor units)   ARGV[4] hold time (ms)
-- with a mandate: ARGV[5] budget   ARGV[6] window keep-until (unix ms)   ARGV[7] mandate key
--                 ARGV[8] mandate summary (JSON)
-- with a plan: KEYS[7] the payer's subscription hash (KEYS[4..6] are any same-slot keys when
--   there is no mandate; ARGV[5..8] are then empty)   ARGV[9] 'deny' | 'overage'
--   ARGV[10] now (gateway clock, unix ms)   ARGV[11] overage price per call (minor units)
--   ARGV[12] 'units': the period counts usage units (added at capture), not calls -- a call is
--   covered while used < included; 'route': past it, hold the route's own price (ARGV[3])
--   An active period with calls left covers the call: {'plan', calls left (-1: a pass)};
--   used up: {'plan_exhausted', period end ms} (deny) or a balance hold of the overage price
--   answered {'overage', balance left}.
-- ARGV[2] empty: read the account instead of holding.
-- Returns {'held', balance left} | {'insufficient', balance} | {'blocked', 0}
--   | {'mandate_revoked', 0} | {'mandate_exceeded', room} | {'swept', holds count, account fields}
if redis.call('EXISTS', KEYS[3]) == 1 then
  return {'blocked', 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[2] == '' then
  -- Account read: expired holds given back, then the account and the holds count, in one
  -- atomic step (so the two always agree).
  sweep_holds(KEYS[1], KEYS[2], now)
  return {'swept', redis.call('HLEN', KEYS[2]), redis.call('HGETALL', KEYS[1])}
end
local amount = tonumber(ARGV[3])
local held_status = 'held'
if ARGV[9] and ARGV[9] ~= '' then
  local s = redis.call('HMGET', KEYS[7], 'end', 'calls', 'used')
  if s[1] and tonumber(s[1]) > tonumber(ARGV[10]) then
    local calls, used = tonumber(s[2]), tonumber(s[3] or '0')
    local units = ARGV[12] == 'units'
    if calls < 0 or used < calls then
      if units then
        return {'plan', calls - used}
      end
      redis.call('HINCRBY', KEYS[7], 'used', 1)
      if calls < 0 then
        return {'plan', -1}
      end
      return {'plan', calls - used - 1}
    end
    if ARGV[9] == 'deny' then
      return {'plan_exhausted', tonumber(s[1])}
    end
    if ARGV[9] ~= 'route' then
      amount = tonumber(ARGV[11])
      held_status = 'overage'
    end
  end
end
local bal = tonumber(redis.call('HGET', KEYS[1], 'bal:' .. ARGV[2]) or '0')
if bal < amount then
  -- Short: first give back holds whose holder died without settling (expired).
  sweep_holds(KEYS[1], KEYS[2], now)
  bal = tonumber(redis.call('HGET', KEYS[1], 'bal:' .. ARGV[2]) or '0')
  if bal < amount then
    return {'insufficient', bal}
  end
end
if ARGV[7] and ARGV[7] ~= '' then
  local m = {wkey = KEYS[4], revkey = KEYS[5], idxkey = KEYS[6], amount = amount,
    budget = tonumber(ARGV[5]), expire_at = ARGV[6], mkey = ARGV[7], summary = ARGV[8]}
  local refused = mandate_admit(m, ARGV[1], now, now + tonumber(ARGV[4]))
  if refused then return refused end
end
redis.call('HINCRBY', KEYS[1], 'bal:' .. ARGV[2], string.format('%d', -amount))
redis.call('HINCRBY', KEYS[1], 'held:' .. ARGV[2], string.format('%d', amount))
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. '|' .. amount .. '|' .. (now + tonumber(ARGV[4])))
return {held_status, bal - amount}
