-- Renew a hold whose request is still being served (a metered response streaming), so that no
-- sweep gives it back as expired while it is in use: its expiry becomes now + ttl, and so does
-- its mandate reservation's.
-- KEYS[1] the receipt's state key (ARGV[1] = 'receipt') or the payer's holds hash ('hold')
-- KEYS[2] (optional) the mandate window hash
-- ARGV[1] 'receipt' | 'hold'   ARGV[2] reservation id   ARGV[3] ttl (ms)
-- Returns 1 when renewed, 0 when no longer held (settled, or swept before).
local t = redis.call('TIME')
local until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[3])
local live = 0
if ARGV[1] == 'receipt' then
  if redis.call('GET', KEYS[1]) == 'held:' .. ARGV[2] then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
    live = 1
  end
else
  local h = redis.call('HGET', KEYS[1], ARGV[2])
  if h then
    local cur, amt, rest = string.match(h, '^([^|]+)|(%d+)|%d+(.*)$')
    if cur then
      redis.call('HSET', KEYS[1], ARGV[2], cur .. '|' .. amt .. '|' .. string.format('%d', until_ms) .. rest)
      live = 1
    end
  end
end
if live == 1 and KEYS[2] then
  local r = redis.call('HGET', KEYS[2], 'h:' .. ARGV[2])
  local amt = r and string.match(r, '^(%d+)|')
  if amt then
    redis.call('HSET', KEYS[2], 'h:' .. ARGV[2], amt .. '|' .. string.format('%d', until_ms))
  end
end
return live
