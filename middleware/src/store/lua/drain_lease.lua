-- A drainer's lease on one bucket's ledger streams, and the head of its three streams, in one call.
-- Only the lease holder reads and trims them, so replicas share the buckets instead of racing on
-- each (another drainer takes over once the lease lapses; the ledger's idempotent insert makes
-- any overlap harmless).
-- KEYS[1] lease key   KEYS[2] usage event stream   KEYS[3] credit stream   KEYS[4] refund stream
-- ARGV[1] drainer id   ARGV[2] lease (ms)   ARGV[3] entries to read per stream
-- Returns false while another drainer holds the lease; else (taken or renewed) the oldest
-- ARGV[3] entries of each stream: {events, credits, refunds}, each as XRANGE answers.
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then
  return false
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {
  redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', ARGV[3]),
  redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', ARGV[3]),
  redis.call('XRANGE', KEYS[4], '-', '+', 'COUNT', ARGV[3]),
}
