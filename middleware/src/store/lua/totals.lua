-- The store's options, the first two ARGV of every script that records usage (after
-- owner.lua's own, which it takes off first); taken off here, before the script proper reads
-- its ARGV:
-- AGGREGATES: '1' moves the daily aggregates and payer totals in the same step as each event
--   (no ledger database: the admin API reads them from here); '0' when a ledger of record
--   (PostgreSQL, fed by the drainer) derives them, so the hot scripts do not.
-- SETTLED_KEEP_MS: how long a settled marker (`done:<reservation>`) is kept: as long as a
--   capture retry or the reconciler can ask for the outcome (RedisStore::settled_keep).
local AGGREGATES = table.remove(ARGV, 1) == '1'
local SETTLED_KEEP_MS = table.remove(ARGV, 1)

-- The bucket's per-payer day totals (the admin payer listing), moved in the same step as each
-- capture's other aggregates (prepended to the scripts that record usage events).
-- `amount` nil: count the request only. `sign` -1 moves them back (a void); default 1.
local function payer_totals(key, payer, currency, amount, sign)
  if not AGGREGATES then
    return
  end
  sign = sign or 1
  redis.call('HINCRBY', key, payer .. '|requests', sign)
  if amount then
    redis.call('HINCRBY', key, payer .. '|amount|' .. currency,
      string.format('%d', sign * tonumber(amount)))
  end
  if redis.call('PTTL', key) < 0 then
    redis.call('PEXPIRE', key, 400 * 86400 * 1000)
  end
end

-- The value of field `name` among flat field/value pairs (nil if absent).
local function field_of(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then
      return fields[i + 1]
    end
  end
  return nil
end

-- The N event field/value pairs that follow ARGV[at] = N.
local function event_fields(argv, at)
  local fields = {}
  for i = at + 1, at + 2 * tonumber(argv[at]) do
    fields[#fields + 1] = argv[i]
  end
  return fields
end

-- Remember a spent receipt under `key` (`state`: `spent:<reservation>:<event id>`) until
-- `until_ms` (unix ms: its exp + skew, by the Redis clock), at least one second. Returns the
-- Redis clock (unix ms).
local function remember_spent(key, state, until_ms)
  local t = redis.call('TIME')
  local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('SET', key, state, 'PX', math.max(tonumber(until_ms) - now_ms, 1000))
  return now_ms
end

-- What a receipt's state `cur` says to a capture by `reservation`: {'duplicate', event id}
-- (this reservation captured it already: settling twice must not append twice), {'conflict',
-- ''} (another request holds or spent it: only possible if our hold expired), or nil (ours
-- to capture).
local function capture_conflict(cur, reservation)
  local spent_prefix = 'spent:' .. reservation .. ':'
  if cur and string.sub(cur, 1, #spent_prefix) == spent_prefix then
    return {'duplicate', string.sub(cur, #spent_prefix + 1)}
  end
  if cur and cur ~= 'held:' .. reservation then
    return {'conflict', ''}
  end
  return nil
end

-- Append one usage event (`fields`) to `stream` and move the day's aggregates by it: the
-- field/increment pairs argv[from ..] on the payer's and the bucket's hash (kept 400 days from
-- their first write), and the payer's totals (`count_only`: its request count, not its amount:
-- a call a plan covered). `sign` -1 (a void) moves them back. Returns the stream id.
local function record_usage(stream, payer_agg, bucket_agg, totals, fields, argv, from, sign, count_only)
  local id = redis.call('XADD', stream, '*', unpack(fields))
  if not AGGREGATES then
    return id
  end
  for _, k in ipairs({payer_agg, bucket_agg}) do
    for i = from, #argv, 2 do
      redis.call('HINCRBY', k, argv[i], string.format('%d', sign * tonumber(argv[i + 1])))
    end
    if redis.call('PTTL', k) < 0 then
      redis.call('PEXPIRE', k, 400 * 86400 * 1000)
    end
  end
  if count_only then
    payer_totals(totals, field_of(fields, 'payer'), nil, nil, sign)
  else
    payer_totals(totals, field_of(fields, 'payer'), field_of(fields, 'currency'),
      field_of(fields, 'amount_minor'), sign)
  end
  return id
end

-- The head of capture.lua and capture_deferred.lua: unless `capture_conflict` refuses (its
-- reply is returned first), append the event whose field count is ARGV[n_at] (its pairs
-- follow; the aggregate pairs after them) and return nil, its fields and its stream id.
local function capture_once(state_key, reservation, stream, payer_agg, bucket_agg, totals, n_at)
  local refused = capture_conflict(redis.call('GET', state_key), reservation)
  if refused then
    return refused
  end
  local fields = event_fields(ARGV, n_at)
  local from = n_at + 1 + 2 * tonumber(ARGV[n_at])
  return nil, fields, record_usage(stream, payer_agg, bucket_agg, totals, fields, ARGV, from, 1)
end
