-- Risk rules on the payer's side (crate::risk): check a request against each rule and, unless
-- the most severe hit refuses or blocks, count it; `block` blocks the payer; every hit is
-- logged. The arithmetic mirrors risk::evaluate.
-- KEYS[1] the bucket's decision log (stream)   KEYS[2] the payer's blocked key
-- KEYS[2 + r] rule r's counter (requests, spend: a window's count; spike: the hourly hash)
-- ARGV: now ms, payer, route, amount, currency, severity so far (0 none, 1 flag, 2 refuse,
--       3 block), nhits, (rule, action, value, limit)* (hits decided elsewhere: new payers),
--       nrules, (id, kind, action, limit, window ms, currency, factor, min baseline)*
-- A blocked payer is refused by its block (in the step that holds), not by the rules: nothing
-- is counted or logged for it.
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {}
end
local sev = { flag = 1, refuse = 2, block = 3 }
local now = tonumber(ARGV[1])
local payer, route, currency = ARGV[2], ARGV[3], ARGV[5]
local amount = tonumber(ARGV[4])
local severity = tonumber(ARGV[6])
local hits = {}
local i = 7
local nhits = tonumber(ARGV[i]); i = i + 1
for _ = 1, nhits do
  table.insert(hits, { ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3] }); i = i + 4
end
local hour = math.floor(now / 3600000)
local rules = {}
local n = tonumber(ARGV[i]); i = i + 1
for r = 1, n do
  local rule = { id = ARGV[i], kind = ARGV[i + 1], action = ARGV[i + 2], limit = tonumber(ARGV[i + 3]),
    window = tonumber(ARGV[i + 4]), currency = ARGV[i + 5], factor = tonumber(ARGV[i + 6]),
    base = tonumber(ARGV[i + 7]), key = KEYS[2 + r] }
  i = i + 8
  local value, limit = nil, nil
  if rule.kind == 'requests' then
    value, limit = tonumber(redis.call('GET', rule.key) or '0') + 1, rule.limit
  elseif rule.kind == 'spend' and rule.currency == currency then
    value, limit = tonumber(redis.call('GET', rule.key) or '0') + amount, rule.limit
  elseif rule.kind == 'spike' and rule.currency == currency then
    local fields = {}
    for h = hour - 24, hour do
      table.insert(fields, tostring(h))
    end
    local vals = redis.call('HMGET', rule.key, unpack(fields))
    local before = 0
    for k = 1, 24 do
      before = before + tonumber(vals[k] or '0')
    end
    local avg = math.floor(before / 24)
    if avg >= rule.base and avg > 0 then
      value, limit = tonumber(vals[25] or '0') + amount, avg * rule.factor
    end
  end
  if value ~= nil and value > limit then
    table.insert(hits, { rule.id, rule.action, string.format('%d', value), string.format('%d', limit) })
    if sev[rule.action] > severity then
      severity = sev[rule.action]
    end
  end
  table.insert(rules, rule)
end
if severity <= 1 then
  for _, rule in ipairs(rules) do
    if rule.kind == 'requests' then
      redis.call('INCR', rule.key)
      redis.call('PEXPIRE', rule.key, rule.window + 60000)
    elseif rule.kind == 'spend' and rule.currency == currency then
      redis.call('INCRBY', rule.key, amount)
      redis.call('PEXPIRE', rule.key, rule.window + 60000)
    elseif rule.kind == 'spike' and rule.currency == currency then
      redis.call('HINCRBY', rule.key, tostring(hour), amount)
      redis.call('PEXPIRE', rule.key, 26 * 3600000)
      if redis.call('HLEN', rule.key) > 30 then
        for _, f in ipairs(redis.call('HKEYS', rule.key)) do
          if tonumber(f) < hour - 24 then
            redis.call('HDEL', rule.key, f)
          end
        end
      end
    end
  end
elseif severity == 3 then
  redis.call('SET', KEYS[2], '1')
end
local out = {}
for _, h in ipairs(hits) do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', 10000, '*', 'time_ms', ARGV[1], 'payer', payer,
    'route', route, 'rule', h[1], 'action', h[2], 'value', h[3], 'limit', h[4])
  for _, v in ipairs(h) do
    table.insert(out, v)
  end
end
return out
