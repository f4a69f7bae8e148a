-- GCRA (generic cell rate algorithm) rate limit, atomically: a request is allowed when its
-- theoretical arrival time (TAT) is within the burst tolerance of now.
-- KEYS[1] the payer's TAT key for this route
-- ARGV[1] emission interval (ms per request)   ARGV[2] burst tolerance (ms) = interval x (burst - 1)
-- Returns {1, 0} allowed | {0, retry after ms} refused
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then
  tat = now
end
local new_tat = tat + interval
local allow_at = new_tat - interval - tolerance
if allow_at > now then
  return {0, allow_at - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', string.format('%d', new_tat - now + 1000))
return {1, 0}
