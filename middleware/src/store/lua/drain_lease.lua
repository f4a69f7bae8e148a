-- A drainer's lease on one bucket's ledger streams: only its holder reads and trims them, so
-- replicas share the buckets instead of racing on each (another drainer takes over once the
-- lease lapses; the ledger's idempotent insert makes any overlap harmless).
-- KEYS[1] lease key   ARGV[1] drainer id   ARGV[2] lease (ms)
-- Returns 1 when ARGV[1] holds the lease now (taken or renewed), 0 when another drainer does.
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
