-- The new-payer cap of an issuer (crate::risk, RiskKind::NewPayers): a payer not seen for the
-- issuer within the memory (SEEN_FOR_MS) is new; a new payer within the minute's cap is
-- remembered and counted, one past the cap is neither.
-- KEYS[1] the (issuer, payer) seen key   KEYS[2] the issuer's count this minute
-- ARGV: limit, memory ms
-- Returns {new (0/1), hit (0/1), value (the count with this payer)}
if redis.call('EXISTS', KEYS[1]) == 1 then
  return { 0, 0, 0 }
end
local value = tonumber(redis.call('GET', KEYS[2]) or '0') + 1
if value > tonumber(ARGV[1]) then
  return { 1, 1, value }
end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], 120000)
return { 1, 0, value }
