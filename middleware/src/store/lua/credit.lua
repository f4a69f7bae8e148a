-- Credit (or, with a negative amount, debit) a payer's balance exactly once per idempotency key
-- (owner.lua is prepended: a top-up receipt is single use per (iss, jti)).
-- KEYS[1] account hash   KEYS[2] idempotency key (for a top-up: the receipt's state key)
-- KEYS[3] credit stream
-- ARGV[1] currency   ARGV[2] signed amount (minor)   ARGV[3] remember-key time (ms)
-- ARGV[4..] credit record field/value pairs
-- Returns {'applied', credit id, balance} | {'duplicate', credit id, balance}
--       | {'insufficient', '', balance} | {'in_use', '', balance}
local bal = tonumber(redis.call('HGET', KEYS[1], 'bal:' .. ARGV[1]) or '0')
if OWNED_BY_OTHER then
  return {'in_use', '', bal}
end
local prev = redis.call('GET', KEYS[2])
if prev then
  local id = string.match(prev, '^spent:credit:(.+)$')
  if id then
    return {'duplicate', id, bal}
  end
  return {'in_use', '', bal}
end
local amount = tonumber(ARGV[2])
if amount < 0 and bal + amount < 0 then
  return {'insufficient', '', bal}
end
redis.call('HINCRBY', KEYS[1], 'bal:' .. ARGV[1], string.format('%d', amount))
redis.call('HINCRBY', KEYS[1], 'credited:' .. ARGV[1], string.format('%d', amount))
local fields = {}
for i = 4, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
local id = redis.call('XADD', KEYS[3], '*', unpack(fields))
redis.call('SET', KEYS[2], 'spent:credit:' .. id, 'PX', ARGV[3])
return {'applied', id, bal + amount}
