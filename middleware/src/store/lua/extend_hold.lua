-- Extend a live balance hold by what the available balance has, up to a want (a stream paused
-- for a top-up): available goes down and held up by the same amount, atomically
-- (rules::extend_hold). The hold's expiry and the rest of its entry are left as they are.
-- KEYS[1] account hash   KEYS[2] holds hash   KEYS[3] payer block key
-- ARGV[1] reservation id   ARGV[2] want (minor units)
-- Returns {'extended', moved, held now, balance left} | {'not_held', 0, 0, 0}
--   | {'blocked', 0, 0, 0}
if redis.call('EXISTS', KEYS[3]) == 1 then
  return {'blocked', 0, 0, 0}
end
local h = redis.call('HGET', KEYS[2], ARGV[1])
if not h then
  return {'not_held', 0, 0, 0}
end
local cur, amt, rest = string.match(h, '^([^|]+)|(%d+)(|.*)$')
if not cur then
  return {'not_held', 0, 0, 0}
end
local held = tonumber(amt)
local bal = tonumber(redis.call('HGET', KEYS[1], 'bal:' .. cur) or '0')
local moved = math.min(math.max(bal, 0), tonumber(ARGV[2]))
if moved > 0 then
  redis.call('HINCRBY', KEYS[1], 'bal:' .. cur, string.format('%d', -moved))
  redis.call('HINCRBY', KEYS[1], 'held:' .. cur, string.format('%d', moved))
  held = held + moved
  redis.call('HSET', KEYS[2], ARGV[1], cur .. '|' .. string.format('%d', held) .. rest)
end
return {'extended', moved, held, bal - moved}
