-- Refund (part of) a charge, once per Idempotency-Key (totals.lua is prepended): what remains
-- refundable is the charge less the sum of its refunds so far, kept in the charge's refund
-- state in the same step that writes each refund, so concurrent refunds from any number of
-- replicas never give back more than was charged (rules::refund is the specification). A
-- balance refund credits the balance (a credit entry, source refund:<event id>); an x402
-- refund is recorded as owed to the payer's address. The charge's day aggregates move back
-- by the amount (not its request count or units).
-- KEYS[1] the charge's refund state (hash: refunded, voided, and per refund k:<key hash> =
--   its fingerprint, r:<key hash> = stream id|amount|credit stream id|remaining|time ms)
-- KEYS[2] account hash   KEYS[3] credit stream   KEYS[4] refund stream
-- KEYS[5] payer's and KEYS[6] bucket's aggregates of the charge's day
-- KEYS[7] bucket's per-payer totals of the charge's day
-- ARGV[1] key hash   ARGV[2] fingerprint   ARGV[3] charged (minor)   ARGV[4] amount asked
-- ('' = all that remains)   ARGV[5] '1' when the ledger records a void of the charge
-- ARGV[6] currency   ARGV[7] '1' owed (x402), '0' credited to the balance   ARGV[8] keep (ms)
-- ARGV[9] the charge's amount aggregate field   ARGV[10] payer
-- ARGV[11] '1' while the refund window is open
-- ARGV[12] N = refund record field pairs, then its pairs; then M = credit field pairs, then
-- its pairs (the script adds the amounts and ids it decides)
-- Returns {status, refund stream id, amount, credit stream id, remaining, time ms}:
-- 'refunded' | 'duplicate' | 'key_reused' | 'voided' | 'exceeds' (remaining = what may still
-- be refunded) | 'zero' | 'window_closed'
local prev = redis.call('HGET', KEYS[1], 'k:' .. ARGV[1])
if prev then
  if prev ~= ARGV[2] then
    return {'key_reused', '', 0, '', 0, 0}
  end
  local sid, amount, credit, remaining, at = string.match(
    redis.call('HGET', KEYS[1], 'r:' .. ARGV[1]) or '', '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
  return {'duplicate', sid, tonumber(amount), credit, tonumber(remaining), tonumber(at)}
end
if ARGV[5] == '1' or redis.call('HEXISTS', KEYS[1], 'voided') == 1 then
  return {'voided', '', 0, '', 0, 0}
end
if ARGV[11] ~= '1' then
  return {'window_closed', '', 0, '', 0, 0}
end
local charged = tonumber(ARGV[3])
local refunded = tonumber(redis.call('HGET', KEYS[1], 'refunded') or '0')
local left = math.max(charged - refunded, 0)
local amount = left
if ARGV[4] ~= '' then
  amount = tonumber(ARGV[4])
end
if amount == 0 then
  if ARGV[4] == '' and charged > 0 then
    return {'exceeds', '', 0, '', 0, 0}
  end
  return {'zero', '', 0, '', 0, 0}
end
if amount > left then
  return {'exceeds', '', 0, '', left, 0}
end
local remaining = left - amount
local n = tonumber(ARGV[12])
local record = {}
for i = 13, 12 + 2 * n do
  record[#record + 1] = ARGV[i]
end
local m_at = 13 + 2 * n
local credit_id = ''
if ARGV[7] ~= '1' then
  redis.call('HINCRBY', KEYS[2], 'bal:' .. ARGV[6], string.format('%d', amount))
  redis.call('HINCRBY', KEYS[2], 'credited:' .. ARGV[6], string.format('%d', amount))
  local credit = {}
  for i = m_at + 1, m_at + 2 * tonumber(ARGV[m_at]) do
    credit[#credit + 1] = ARGV[i]
  end
  credit[#credit + 1] = 'amount_minor'
  credit[#credit + 1] = string.format('%d', amount)
  credit_id = redis.call('XADD', KEYS[3], '*', unpack(credit))
end
for _, v in ipairs({'amount_minor', string.format('%d', amount), 'credit_id', credit_id,
  'remaining_minor', string.format('%d', remaining)}) do
  record[#record + 1] = v
end
local id = redis.call('XADD', KEYS[4], '*', unpack(record))
local at = field_of(record, 'time_ms') or '0'
redis.call('HSET', KEYS[1], 'refunded', string.format('%d', refunded + amount),
  'k:' .. ARGV[1], ARGV[2],
  'r:' .. ARGV[1], table.concat({id, string.format('%d', amount), credit_id,
    string.format('%d', remaining), at}, '|'))
redis.call('PEXPIRE', KEYS[1], ARGV[8])
if AGGREGATES then
  for _, k in ipairs({KEYS[5], KEYS[6]}) do
    if redis.call('EXISTS', k) == 1 then
      redis.call('HINCRBY', k, ARGV[9], string.format('%d', -amount))
    end
  end
  if redis.call('EXISTS', KEYS[7]) == 1 then
    redis.call('HINCRBY', KEYS[7], ARGV[10] .. '|amount|' .. ARGV[6], string.format('%d', -amount))
  end
end
return {'refunded', id, amount, credit_id, remaining, tonumber(at)}
