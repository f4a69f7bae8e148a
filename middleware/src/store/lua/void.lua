-- Undo a receipt charged at admission whose request was not served (totals.lua is prepended):
-- the receipt becomes usable again, one void event is appended and the charge's day
-- aggregates move back. Only the reservation that spent the receipt may void it; a second
-- void finds nothing to undo.
-- KEYS[1] receipt state key   KEYS[2] usage event stream
-- KEYS[3] payer's aggregates and KEYS[4] bucket's aggregates of the charge's day
-- KEYS[5] bucket's per-payer totals of the charge's day
-- ARGV[1] reservation id   ARGV[2] the charge's stream id
-- ARGV[3] N = number of void event field pairs   ARGV[4 .. 3+2N] its field/value pairs
-- ARGV[4+2N ..] the charge's aggregate field/increment pairs (subtracted)
-- Returns {'voided', void event id} | {'not_charged', ''}
if redis.call('GET', KEYS[1]) ~= 'spent:' .. ARGV[1] .. ':' .. ARGV[2] then
  return {'not_charged', ''}
end
redis.call('DEL', KEYS[1])
local fields = event_fields(ARGV, 3)
local id = record_usage(KEYS[2], KEYS[3], KEYS[4], KEYS[5], fields, ARGV, 4 + 2 * tonumber(ARGV[3]), -1)
return {'voided', id}
