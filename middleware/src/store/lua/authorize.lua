-- Authorize one use of a receipt, atomically (owner.lua and mandate.lua are prepended).
-- KEYS[1] receipt state key   KEYS[2] payer block key
-- with a mandate: KEYS[3] window hash   KEYS[4] revoked marker   KEYS[5] payer's mandate index
-- ARGV[1] reservation id      ARGV[2] hold time (ms)
-- with a mandate: ARGV[3] amount   ARGV[4] budget   ARGV[5] window keep-until (unix ms)
--                 ARGV[6] mandate key   ARGV[7] mandate summary (JSON)
-- Returns {status, room}: 'reserved' | 'blocked' | 'replayed' | 'in_use' | 'revoked'
--   | 'mandate_revoked' | 'mandate_exceeded' (room = what is left in the window)
if OWNED_BY_OTHER then
  return {'replayed', 0}
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {'blocked', 0}
end
local cur = redis.call('GET', KEYS[1])
if cur then
  if string.sub(cur, 1, 6) == 'spent:' then
    return {'replayed', 0}
  end
  if cur == 'revoked' then
    return {'revoked', 0}
  end
  return {'in_use', 0}
end
if #KEYS >= 5 then
  local m = {wkey = KEYS[3], revkey = KEYS[4], idxkey = KEYS[5], amount = tonumber(ARGV[3]),
    budget = tonumber(ARGV[4]), expire_at = ARGV[5], mkey = ARGV[6], summary = ARGV[7]}
  local now = mandate_now()
  local refused = mandate_admit(m, ARGV[1], now, now + tonumber(ARGV[2]))
  if refused then return refused end
end
redis.call('SET', KEYS[1], 'held:' .. ARGV[1], 'PX', ARGV[2])
return {'reserved', 0}
