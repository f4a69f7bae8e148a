-- A replica's balance lease (totals.lua is prepended): one step that records the
-- charges the replica drew from its lease since the last sync, then resizes the lease.
--
-- The lease is a hold in the payer's holds hash (`<currency>|<amount>|<expiry>`, so an expired
-- lease is given back by sweep_holds like any hold whose holder died). Each charge is taken
-- from the lease first, then from the balance as far as it goes; the rest is recorded as
-- uncharged (never a negative balance). After the charges the lease is resized: mode 'grow'
-- (a replica's regular sync) tops it up to `reserved` (the draws still being served) plus
-- `target` (room for new draws) as far as the balance allows, and never shrinks it (draws the
-- replica admitted while this call was in flight are covered by what it held); mode 'fit' (the
-- replica's return, no draw in flight) sets it to exactly `reserved` + `target`, the rest back
-- to the balance. A blocked payer's lease does not grow.
--
-- KEYS[1] account hash   KEYS[2] holds hash   KEYS[3] payer block key   KEYS[4] events stream
-- KEYS[5] payer's daily aggregates   KEYS[6] bucket's daily aggregates   KEYS[7] bucket's
--   per-payer day totals (all of the charges' UTC day)
-- ARGV[1] lease id   ARGV[2] currency   ARGV[3] batch sequence (1, 2, ...: a batch whose
--   sequence is not above the last applied one was applied already and is skipped -- a retry
--   after a lost reply)   ARGV[4] reserved (minor)   ARGV[5] target (minor)
-- ARGV[6] 'grow' | 'fit'   ARGV[7] ttl (ms)
-- ARGV[8] N charges, then C, C event field/value pairs every charge shares, then per charge:
--   charge (minor), K, its K other event field/value pairs, its aggregate amount field; then
--   M, M aggregate field/increment pairs of the whole batch (requests and units: they do not
--   depend on what is charged)
-- Returns {status, lease amount, balance, had lease (0|1), charged, events recorded,
--   then (index in the batch, uncharged) of each charge not charged in full (rare)}
--   status: 'ok' | 'blocked' | 'duplicate' (the batch was applied before: no event ids)
local acct, holds = KEYS[1], KEYS[2]
local id, cur = ARGV[1], ARGV[2]
local seq, reserved, target = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local blocked = redis.call('EXISTS', KEYS[3]) == 1
local h = redis.call('HGET', holds, id)
local held = 0
if h then
  local c, amt = string.match(h, '^([^|]+)|(%d+)|')
  if c == cur then
    held = tonumber(amt)
  end
end
local old_held = held
local bal = tonumber(redis.call('HGET', acct, 'bal:' .. cur) or '0')
local charged_total = 0
local recorded = 0
local short = {}
local status = 'ok'
local seq_field = 'lseq:' .. id
local n = tonumber(ARGV[8])
if n > 0 and tonumber(redis.call('HGET', acct, seq_field) or '0') >= seq then
  status = 'duplicate'
  n = 0
end
local common = {}
for i = 10, 9 + 2 * tonumber(ARGV[9]) do
  common[#common + 1] = ARGV[i]
end
local at = 10 + 2 * tonumber(ARGV[9])
local agg, agg_order, payer = {}, {}, nil
local function add_agg(field, v)
  if agg[field] == nil then
    agg[field] = 0
    agg_order[#agg_order + 1] = field
  end
  agg[field] = agg[field] + v
end
for _ = 1, n do
  local charge = tonumber(ARGV[at])
  local k = tonumber(ARGV[at + 1])
  local fields = {unpack(common)}
  for i = at + 2, at + 1 + 2 * k do
    fields[#fields + 1] = ARGV[i]
  end
  at = at + 2 + 2 * k
  local amount_field = ARGV[at]
  local from_held = math.min(charge, held)
  held = held - from_held
  local from_bal = math.min(charge - from_held, bal)
  bal = bal - from_bal
  local charged = from_held + from_bal
  local uncharged = charge - charged
  fields[#fields + 1] = 'amount_minor'
  fields[#fields + 1] = tostring(charged)
  fields[#fields + 1] = 'uncharged_minor'
  fields[#fields + 1] = tostring(uncharged)
  add_agg(amount_field, charged)
  at = at + 1
  payer = payer or field_of(fields, 'payer')
  redis.call('XADD', KEYS[4], '*', unpack(fields))
  recorded = recorded + 1
  if uncharged > 0 then
    short[#short + 1] = recorded - 1
    short[#short + 1] = uncharged
  end
  charged_total = charged_total + charged
end
if n > 0 then
  for i = at + 1, at + 2 * tonumber(ARGV[at]), 2 do
    add_agg(ARGV[i], tonumber(ARGV[i + 1]))
  end
  redis.call('HINCRBY', acct, 'captured:' .. cur, string.format('%d', charged_total))
  -- The batch's aggregates, summed per field: one HINCRBY per field and key for the whole
  -- batch, not per event (the same totals as record_usage would reach event by event).
  if AGGREGATES then
    for _, k in ipairs({KEYS[5], KEYS[6]}) do
      for _, f in ipairs(agg_order) do
        redis.call('HINCRBY', k, f, string.format('%d', agg[f]))
      end
      if redis.call('PTTL', k) < 0 then
        redis.call('PEXPIRE', k, 400 * 86400 * 1000)
      end
    end
    redis.call('HINCRBY', KEYS[7], payer .. '|requests', n)
    redis.call('HINCRBY', KEYS[7], payer .. '|amount|' .. cur, string.format('%d', charged_total))
    if redis.call('PTTL', KEYS[7]) < 0 then
      redis.call('PEXPIRE', KEYS[7], 400 * 86400 * 1000)
    end
  end
end
-- Resize: the draws in flight stay held; room for new ones unless the payer is blocked.
if blocked then
  status = 'blocked'
end
local want = reserved + target
if want > held and not blocked then
  local take = math.min(want - held, bal)
  held = held + take
  bal = bal - take
elseif want < held and ARGV[6] == 'fit' then
  bal = bal + held - want
  held = want
end
redis.call('HSET', acct, 'bal:' .. cur, string.format('%d', bal))
if held ~= old_held then
  redis.call('HINCRBY', acct, 'held:' .. cur, string.format('%d', held - old_held))
end
if held > 0 then
  redis.call('HSET', holds, id, cur .. '|' .. held .. '|' .. (now + tonumber(ARGV[7])))
  if n > 0 then
    redis.call('HSET', acct, seq_field, seq)
  end
else
  -- Nothing left held: the lease ends (a later sync starts it again).
  if h then
    redis.call('HDEL', holds, id)
  end
  if n > 0 then
    redis.call('HSET', acct, seq_field, seq)
  elseif status ~= 'duplicate' then
    -- A sync without charges (the replica's last, returning the lease): no retry of a batch
    -- can follow it, so the sequence is forgotten.
    redis.call('HDEL', acct, seq_field)
  end
end
local out = {status, held, bal, h and 1 or 0, charged_total, recorded}
for _, v in ipairs(short) do
  out[#out + 1] = v
end
return out
