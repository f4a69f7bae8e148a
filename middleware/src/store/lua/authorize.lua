-- Authorize one use of a receipt, atomically.
-- KEYS[1] receipt state key   KEYS[2] payer block key
-- ARGV[1] reservation id      ARGV[2] hold time (ms)
-- Returns: 'reserved' | 'blocked' | 'replayed' | 'in_use'
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 'blocked'
end
local cur = redis.call('GET', KEYS[1])
if cur then
  if string.sub(cur, 1, 6) == 'spent:' then
    return 'replayed'
  end
  return 'in_use'
end
redis.call('SET', KEYS[1], 'held:' .. ARGV[1], 'PX', ARGV[2])
return 'reserved'
