-- Deliver a failed message again, to its endpoint only (store/webhook.rs): taken off the
-- bucket's failures and appended to its outbox, in one step. Nil: no such failure here.
-- KEYS[1] the bucket's failed deliveries (list of JSON)
-- KEYS[2] the bucket's outbox (stream)
-- ARGV: endpoint, message id
local items = redis.call('LRANGE', KEYS[1], 0, -1)
for _, raw in ipairs(items) do
  local f = cjson.decode(raw)
  if f.endpoint == ARGV[1] and f.id == ARGV[2] then
    redis.call('LREM', KEYS[1], 1, raw)
    local seq = redis.call('XADD', KEYS[2], '*', 'id', f.id, 'kind', f.kind, 'payer', f.payer,
      'time_ms', f.time_ms, 'body', f.body, 'only', ARGV[1])
    return {seq, raw}
  end
end
return false
