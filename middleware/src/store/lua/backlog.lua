-- What waits for the drainer in one bucket: for each stream in KEYS (the usage events, the
-- credits), its length and the id of its oldest entry ('' when empty). Drained entries are
-- trimmed, so the length is the backlog.
local out = {}
for _, k in ipairs(KEYS) do
  out[#out + 1] = redis.call('XLEN', k)
  local first = redis.call('XRANGE', k, '-', '+', 'COUNT', 1)
  out[#out + 1] = first[1] and first[1][1] or ''
end
return out
