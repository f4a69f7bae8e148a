-- Release a hold: the receipt becomes usable again. Only the holder may release.
-- (mandate.lua is prepended.)
-- KEYS[1] receipt state key   with a mandate: KEYS[2] window hash
-- ARGV[1] reservation id
-- Returns 1 if released, 0 if the hold was not ours (expired, captured, or another's).
if #KEYS >= 2 then
  mandate_settle(KEYS[2], ARGV[1], 0)
end
if redis.call('GET', KEYS[1]) == 'held:' .. ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
