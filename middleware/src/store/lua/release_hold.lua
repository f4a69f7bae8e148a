-- Release a hold: the amount returns to the balance. (mandate.lua is prepended.)
-- KEYS[1] account hash   KEYS[2] holds hash   with a mandate: KEYS[3] window hash
-- ARGV[1] reservation id
-- Returns 1 if released, 0 if there was no such hold.
if #KEYS >= 3 then
  mandate_settle(KEYS[3], ARGV[1], 0)
end
local h = redis.call('HGET', KEYS[2], ARGV[1])
if not h then
  return 0
end
local cur, held = string.match(h, '^([^|]+)|(%d+)|')
redis.call('HINCRBY', KEYS[1], 'held:' .. cur, string.format('%d', -tonumber(held)))
redis.call('HINCRBY', KEYS[1], 'bal:' .. cur, string.format('%d', tonumber(held)))
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
