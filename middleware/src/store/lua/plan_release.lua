-- Give a plan-covered call back (not served): the period's used calls go down by one, once.
-- KEYS[1] settled marker of this reservation   KEYS[2] the subscription hash
-- ARGV[1] 'units' for a unit plan (nothing was counted at the hold: nothing to give back)
-- ARGV[2] how long the marker is kept (ms): as long as a capture retry can come
-- Returns 1 if released, 0 if it was settled already.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
if ARGV[1] ~= 'units' and tonumber(redis.call('HGET', KEYS[2], 'used') or '0') > 0 then
  redis.call('HINCRBY', KEYS[2], 'used', -1)
end
redis.call('SET', KEYS[1], 'released', 'PX', ARGV[2])
return 1
