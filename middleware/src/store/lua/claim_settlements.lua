-- Claim due x402 settlements of one bucket: each claimed job's due time moves one lease ahead,
-- so no other settler gets it meanwhile (a settler that dies leaves it to the next one).
-- KEYS[1] due sorted set   KEYS[2] jobs hash
-- ARGV[1] lease (ms)   ARGV[2] limit
-- Returns: {id1, job1, id2, job2, ...}
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  local job = redis.call('HGET', KEYS[2], id)
  if job then
    redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[1]), id)
    out[#out + 1] = id
    out[#out + 1] = job
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
