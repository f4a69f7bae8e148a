-- Mandate windows (prepended to the scripts that reserve, capture or release under a mandate).
-- A window hash: 'budget' -> budget (minor units), 'spent' -> captured (minor units),
-- 'h:<reservation>' -> '<amount>|<expiry ms>' for each reservation in flight.
local function mandate_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Room left in a window: budget - spent - live reservations except `except` (expired
-- reservations are removed, so a dead holder's room comes back).
local function mandate_room(wkey, budget, now, except)
  local all = redis.call('HGETALL', wkey)
  local used = 0
  for i = 1, #all, 2 do
    local f = all[i]
    if f == 'spent' then
      used = used + tonumber(all[i + 1])
    elseif string.sub(f, 1, 2) == 'h:' and f ~= except then
      local amt, exp = string.match(all[i + 1], '^(%d+)|(%d+)$')
      if amt then
        if tonumber(exp) <= now then
          redis.call('HDEL', wkey, f)
        else
          used = used + tonumber(amt)
        end
      end
    end
  end
  return budget - used
end

-- Check that a mandate can take `amount` now. Returns nil, or the refusal reply.
-- m = {wkey, revkey, idxkey, amount, budget, expire_at, mkey, summary}
local function mandate_check(m, now)
  if redis.call('EXISTS', m.revkey) == 1 then
    return {'mandate_revoked', 0}
  end
  local room = mandate_room(m.wkey, m.budget, now, nil)
  if m.amount > room then
    return {'mandate_exceeded', math.max(room, 0)}
  end
  return nil
end

-- Check the mandate (mandate_check), then reserve `m.amount` for reservation `res` until
-- `until_ms`. Returns nil (reserved), or the refusal reply (nothing written).
local function mandate_admit(m, res, now, until_ms)
  local refused = mandate_check(m, now)
  if refused then
    return refused
  end
  redis.call('HSET', m.wkey, 'budget', string.format('%d', m.budget),
    'h:' .. res, string.format('%d', m.amount) .. '|' .. string.format('%d', until_ms))
  redis.call('PEXPIREAT', m.wkey, m.expire_at)
  redis.call('HSET', m.idxkey, m.mkey, m.summary)
  redis.call('PEXPIRE', m.idxkey, 400 * 86400 * 1000)
  return nil
end

-- Capture `charge` (0 to release) for a reservation.
local function mandate_settle(wkey, res, charge)
  redis.call('HDEL', wkey, 'h:' .. res)
  if charge > 0 then
    redis.call('HINCRBY', wkey, 'spent', string.format('%d', charge))
  end
end

