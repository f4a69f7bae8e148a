-- Give back a payer's holds whose holder died without settling (expired): prepended to the
-- scripts that take from a balance. Called only when the balance looks short (and by account
-- reads), so a busy payer's request does not scan every hold in flight.
local function sweep_holds(acct, holds, now)
  local all = redis.call('HGETALL', holds)
  for i = 1, #all, 2 do
    local cur, amt, exp = string.match(all[i + 1], '^([^|]+)|(%d+)|(%d+)')
    if cur and tonumber(exp) <= now then
      redis.call('HINCRBY', acct, 'held:' .. cur, string.format('%d', -tonumber(amt)))
      redis.call('HINCRBY', acct, 'bal:' .. cur, string.format('%d', tonumber(amt)))
      redis.call('HDEL', holds, all[i])
    end
  end
end

