-- The bucket's per-payer day totals (the admin payer listing), moved in the same step as each
-- capture's other aggregates (prepended to the scripts that record usage events).
-- `amount` nil: count the request only.
local function payer_totals(key, payer, currency, amount)
  redis.call('HINCRBY', key, payer .. '|requests', 1)
  if amount then
    redis.call('HINCRBY', key, payer .. '|amount|' .. currency, amount)
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

