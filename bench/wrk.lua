-- wrk script for bench/quick.sh.
--
-- Environment:
--   BENCH_SCENARIO  name written into the result line
--   BENCH_OUT       file to append one JSON result line to
--   BENCH_HOST      optional Host header (selects the priced route in the gateway config)
--   BENCH_RECEIPTS  optional file of receipts (one JWT per line); when set, every request carries
--                   a fresh receipt as `Authorization: Payment <jwt>`. Thread i of n uses lines
--                   i, i+n, i+2n, ... so no receipt is ever sent twice. When a thread runs out it
--                   stops (counted as `exhausted`), it never reuses a receipt.
--   BENCH_THREADS   number of wrk threads (must equal -t), needed with BENCH_RECEIPTS
--   BENCH_METHOD    optional request method (default GET)
--   BENCH_BODY      optional request body (sent with Content-Type BENCH_CTYPE, default
--                   application/json)
--   BENCH_AUTH      optional Authorization header value on every request (e.g. "Bearer tg1...")
--   BENCH_EXPECT_PR when "1", count 2xx answers without PAYMENT-RESPONSE (as with receipts)

local threads = {}
local next_id = 0

function setup(thread)
   thread:set("id", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

local host = os.getenv("BENCH_HOST")
if host == "" then host = nil end
local receipts_file = os.getenv("BENCH_RECEIPTS")
if receipts_file == "" then receipts_file = nil end
local function env(name)
   local v = os.getenv(name)
   if v == "" then return nil end
   return v
end
if env("BENCH_METHOD") then wrk.method = env("BENCH_METHOD") end
if env("BENCH_BODY") then
   wrk.body = env("BENCH_BODY")
   wrk.headers["Content-Type"] = env("BENCH_CTYPE") or "application/json"
end
if env("BENCH_AUTH") then wrk.headers["Authorization"] = env("BENCH_AUTH") end
local expect_pr = env("BENCH_EXPECT_PR") == "1"
local dpop = env("BENCH_DPOP") == "1"

-- per-thread state (each wrk thread has its own Lua state)
statuses = {}
non2xx = 0
missing_payment_response = 0
exhausted = 0
sent = 0
local receipts = nil
local n_receipts = 0

function init(args)
   if host then wrk.headers["Host"] = host end
   if receipts_file then
      local nth = tonumber(os.getenv("BENCH_THREADS") or "1")
      receipts = {}
      local i = 0
      for line in io.lines(receipts_file) do
         if line ~= "" then
            if i % nth == id then
               n_receipts = n_receipts + 1
               receipts[n_receipts] = line
            end
            i = i + 1
         end
      end
   end
end

if receipts_file then
   function request()
      sent = sent + 1
      if sent > n_receipts then
         exhausted = exhausted + 1
         wrk.thread:stop()
         -- never reuse a receipt: send something harmless that is visibly not a paid request
         return wrk.format("GET", "/__bench_receipts_exhausted__", { Host = "exhausted.invalid" })
      end
      if dpop then
         -- BENCH_DPOP=1: the lines are DPoP proofs, sent with the BENCH_AUTH token
         return wrk.format(nil, nil, {
            Host = host or wrk.headers["Host"],
            Authorization = wrk.headers["Authorization"],
            DPoP = receipts[sent],
         })
      end
      return wrk.format(nil, nil, {
         Host = host or wrk.headers["Host"],
         Authorization = "Payment " .. receipts[sent],
      })
   end
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
   elseif receipts or expect_pr then
      if not (headers["payment-response"] or headers["PAYMENT-RESPONSE"] or headers["Payment-Response"]) then
         missing_payment_response = missing_payment_response + 1
      end
   end
end

function done(summary, latency, requests)
   local total_non2xx, total_missing, total_exhausted = 0, 0, 0
   local st = {}
   for _, t in ipairs(threads) do
      total_non2xx = total_non2xx + (t:get("non2xx") or 0)
      total_missing = total_missing + (t:get("missing_payment_response") or 0)
      total_exhausted = total_exhausted + (t:get("exhausted") or 0)
      for code, n in pairs(t:get("statuses") or {}) do
         st[code] = (st[code] or 0) + n
      end
   end
   local parts = {}
   for code, n in pairs(st) do
      table.insert(parts, string.format('"%d":%d', code, n))
   end
   local e = summary.errors
   local line = string.format(
      '{"scenario":"%s","idle_before":%d,"requests":%d,"duration_us":%d,"rps":%.1f,"p50_us":%d,"p90_us":%d,"p99_us":%d,'
         .. '"max_us":%d,"non2xx":%d,"missing_payment_response":%d,"exhausted":%d,"statuses":{%s},'
         .. '"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d,"status":%d}}',
      os.getenv("BENCH_SCENARIO") or "?", tonumber(os.getenv("BENCH_IDLE") or "-1") or -1, summary.requests, summary.duration,
      summary.requests / (summary.duration / 1e6),
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
      total_non2xx, total_missing, total_exhausted, table.concat(parts, ","),
      e.connect, e.read, e.write, e.timeout, e.status)
   io.write(line .. "\n")
   local out = os.getenv("BENCH_OUT")
   if out and out ~= "" then
      local f = assert(io.open(out, "a"))
      f:write(line .. "\n")
      f:close()
   end
end
