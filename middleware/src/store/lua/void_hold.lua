-- Undo a balance charge taken at admission whose request was not served (totals.lua is
-- prepended): the amount returns to the balance, one void event is appended and the charge's
-- day aggregates move back -- once (the settled marker turns to 'void|...').
-- KEYS[1] account hash   KEYS[2] usage event stream   KEYS[3] payer's aggregates and KEYS[4]
-- bucket's aggregates of the charge's day   KEYS[5] bucket's per-payer totals of that day
-- KEYS[6] settled marker of the reservation
-- KEYS[7] the charge's refund state (refund.lua): a charge refunded is not voided; a void
--   leaves its mark there for refunds (VOID_MARK_KEEP_MS, ARGV[4])
-- ARGV[1] the charge's stream id   ARGV[2] currency   ARGV[3] amount (minor)
-- ARGV[4] void mark keep (ms)
-- ARGV[5] N = number of void event field pairs   ARGV[6 .. 5+2N] its field/value pairs
-- ARGV[6+2N ..] the charge's aggregate field/increment pairs (subtracted)
-- Returns {'voided', void event id} | {'not_charged', ''}
if redis.call('GET', KEYS[6]) ~= ARGV[1] .. '|' .. ARGV[3] .. '|0|' .. ARGV[2] then
  return {'not_charged', ''}
end
if redis.call('HEXISTS', KEYS[7], 'refunded') == 1 then
  return {'not_charged', ''}
end
local amount = tonumber(ARGV[3])
redis.call('HINCRBY', KEYS[1], 'bal:' .. ARGV[2], string.format('%d', amount))
redis.call('HINCRBY', KEYS[1], 'captured:' .. ARGV[2], string.format('%d', -amount))
local fields = event_fields(ARGV, 5)
local id = record_usage(KEYS[2], KEYS[3], KEYS[4], KEYS[5], fields, ARGV, 6 + 2 * tonumber(ARGV[5]), -1)
redis.call('SET', KEYS[6], 'void|' .. id, 'KEEPTTL')
redis.call('HSET', KEYS[7], 'voided', id)
redis.call('PEXPIRE', KEYS[7], ARGV[4])
return {'voided', id}
