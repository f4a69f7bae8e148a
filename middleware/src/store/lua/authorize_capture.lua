-- Capture at admission: authorize one use of a receipt AND spend it with its usage event, in
-- one step (a fixed price, no mandate; owner.lua and totals.lua are prepended). void.lua undoes it when the
-- request is not served.
-- KEYS[1] receipt state key   KEYS[2] payer block key   KEYS[3] usage event stream
-- KEYS[4] payer's daily aggregates   KEYS[5] bucket's daily aggregates (all payers)
-- KEYS[6] bucket's per-payer day totals
-- ARGV[1] reservation id   ARGV[2] remember-spent-until (unix ms)
-- ARGV[3] N = number of event field pairs   ARGV[4 .. 3+2N] event field/value pairs
-- ARGV[4+2N ..] aggregate field/increment pairs
-- Returns {'captured', event id} | {'blocked' | 'replayed' | 'in_use' | 'revoked', ''}
if OWNED_BY_OTHER then
  return {'replayed', ''}
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {'blocked', ''}
end
local cur = redis.call('GET', KEYS[1])
if cur then
  if string.sub(cur, 1, 6) == 'spent:' then
    return {'replayed', ''}
  end
  if cur == 'revoked' then
    return {'revoked', ''}
  end
  return {'in_use', ''}
end
local fields = event_fields(ARGV, 3)
local id = record_usage(KEYS[3], KEYS[4], KEYS[5], KEYS[6], fields, ARGV, 4 + 2 * tonumber(ARGV[3]), 1)
remember_spent(KEYS[1], 'spent:' .. ARGV[1] .. ':' .. id, ARGV[2])
return {'captured', id}
