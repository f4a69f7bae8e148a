-- Undo a receipt charged at admission whose request was not served (totals.lua is prepended):
-- the receipt becomes usable again, one void event is appended and the charge's day
-- aggregates move back. Only the reservation that spent the receipt may void it; a second
-- void finds nothing to undo.
-- KEYS[1] receipt state key   KEYS[2] usage event stream
-- KEYS[3] payer's aggregates and KEYS[4] bucket's aggregates of the charge's day
-- KEYS[5] bucket's per-payer totals of the charge's day
-- KEYS[6] the charge's refund state (refund.lua): a charge refunded is not voided; a void
--   leaves its mark there for refunds (VOID_MARK_KEEP_MS, ARGV[3] of the script proper)
-- ARGV[1] reservation id   ARGV[2] the charge's stream id   ARGV[3] void mark keep (ms)
-- ARGV[4] N = number of void event field pairs   ARGV[5 .. 4+2N] its field/value pairs
-- ARGV[5+2N ..] the charge's aggregate field/increment pairs (subtracted)
-- Returns {'voided', void event id} | {'not_charged', ''}
if redis.call('GET', KEYS[1]) ~= 'spent:' .. ARGV[1] .. ':' .. ARGV[2] then
  return {'not_charged', ''}
end
if redis.call('HEXISTS', KEYS[6], 'refunded') == 1 then
  return {'not_charged', ''}
end
redis.call('DEL', KEYS[1])
local fields = event_fields(ARGV, 4)
local id = record_usage(KEYS[2], KEYS[3], KEYS[4], KEYS[5], fields, ARGV, 5 + 2 * tonumber(ARGV[4]), -1)
redis.call('HSET', KEYS[6], 'voided', id)
redis.call('PEXPIRE', KEYS[6], ARGV[3])
return {'voided', id}
