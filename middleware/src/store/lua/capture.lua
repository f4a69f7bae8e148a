-- Capture a held receipt and append exactly one usage event, atomically (mandate.lua is
-- prepended).
-- KEYS[1] receipt state key   KEYS[2] usage event stream
-- KEYS[3] payer's daily aggregates   KEYS[4] bucket's daily aggregates (all payers)
-- KEYS[5] bucket's per-payer day totals (payer listing)
-- with a mandate: KEYS[6] window hash (the event's amount_minor is spent in it)
-- ARGV[1] reservation id      ARGV[2] remember-spent-until (unix ms)
-- ARGV[3] N = number of event field pairs   ARGV[4 .. 3+2N] event field/value pairs
-- ARGV[4+2N ..] aggregate field/increment pairs
-- Returns: {'captured', event id} | {'duplicate', event id} | {'conflict', ''}
local refused, fields, id = capture_once(KEYS[1], ARGV[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], 3)
if refused then return refused end
if #KEYS >= 6 then
  mandate_settle(KEYS[6], ARGV[1], tonumber(field_of(fields, 'amount_minor') or '0'))
end
remember_spent(KEYS[1], 'spent:' .. ARGV[1] .. ':' .. id, ARGV[2])
return {'captured', id}
