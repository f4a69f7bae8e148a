-- Record how an x402 settlement attempt ended.
-- KEYS[1] due sorted set   KEYS[2] jobs hash   KEYS[3] failed set   KEYS[4] payer block key
-- ARGV[1] job (stream) id   ARGV[2] 'done' | 'retry' | 'failed'   ARGV[3] retry delay (ms)
-- ARGV[4] error
-- Returns 1, or 0 when the job is unknown (finished already).
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if not raw then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
if ARGV[2] == 'done' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 1
end
local job = cjson.decode(raw)
job.attempts = job.attempts + 1
job.error = ARGV[4]
if ARGV[2] == 'retry' then
  local t = redis.call('TIME')
  local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[3]), ARGV[1])
else
  job.status = 'failed'
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('SADD', KEYS[3], ARGV[1])
  -- The payer stays blocked until an operator resolves the failure.
  redis.call('SET', KEYS[4], 'x402 settlement failed')
end
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(job))
return 1
