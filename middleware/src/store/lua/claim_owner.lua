-- On a Redis Cluster: claim a receipt's (iss, jti) for its payer before spending it (owner.lua
-- explains why; on one server the spending script does this itself).
-- KEYS[1] owner key   ARGV[1] payer   ARGV[2] keep-until (unix ms)
-- Returns 1 when another payer presented it first (refuse), else 0.
local cur = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'GET', 'PXAT', ARGV[2])
if cur and cur ~= ARGV[1] then
  return 1
end
return 0
