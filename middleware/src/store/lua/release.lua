-- Release a hold: the receipt becomes usable again. Only the holder may release.
-- KEYS[1] receipt state key   ARGV[1] reservation id
-- Returns 1 if released, 0 if the hold was not ours (expired, captured, or another's).
if redis.call('GET', KEYS[1]) == 'held:' .. ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
