-- x402 deferred: capture a held authorization (spend + exactly one usage event, as capture.lua)
-- and queue its settlement, atomically: one job per captured authorization.
-- KEYS[1] state key   KEYS[2] usage event stream   KEYS[3] payer's daily aggregates
-- KEYS[4] bucket's daily aggregates   KEYS[5] jobs hash   KEYS[6] due sorted set
-- KEYS[7] bucket's per-payer day totals (payer listing)
-- ARGV[1] reservation id   ARGV[2] remember-spent-until (unix ms)   ARGV[3] payer
-- ARGV[4] job body (JSON)   ARGV[5] N = number of event field pairs
-- ARGV[6 .. 5+2N] event field/value pairs   ARGV[6+2N ..] aggregate field/increment pairs
-- Returns: {'captured', event id} | {'duplicate', event id} | {'conflict', ''}
local refused, _, id = capture_once(KEYS[1], ARGV[1], KEYS[2], KEYS[3], KEYS[4], KEYS[7], 5)
if refused then return refused end
local now_ms = remember_spent(KEYS[1], 'spent:' .. ARGV[1] .. ':' .. id, ARGV[2])
-- The job is keyed by the event's stream id: the two are joined one to one.
redis.call('HSET', KEYS[5], id, cjson.encode({payer = ARGV[3], body = ARGV[4], attempts = 0, status = 'queued', error = ''}))
redis.call('ZADD', KEYS[6], now_ms, id)
return {'captured', id}
