-- Replays the benchmark's request mix, one request per line of the file given as the first
-- script argument (method, path, token, idempotent 0/1, body; tab-separated), in order and
-- round-robin across connections. Every @NNNNNNNNNN@ is replaced by a 12-character value
-- unique to the request (BENCH_RUN, 4 characters, then a counter), so no two requests of a
-- run are identical and no idempotency key repeats, as from healthy agents.
-- BENCH_DELAY_MS > 0 paces each connection (fixed rate).
-- done() prints one JSON line, prefixed by BENCH_JSON, for the harness to parse.

local pace = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
if pace > 0 then
  function delay() return pace end
end
local run = os.getenv("BENCH_RUN") or "0000"
local PLACEHOLDER = "@NNNNNNNNNN@"

local threads = {}
function setup(thread) table.insert(threads, thread) end

local reqs = {}
local n = 0
local i = 0
local seq = 0
wraps = 0

-- Split a formatted request on the placeholder: { "GET /v1/items/", "?x HTTP/1.1..." }.
local function parts(s)
  local out = {}
  local from = 1
  while true do
    local a, b = string.find(s, PLACEHOLDER, from, true)
    if not a then break end
    table.insert(out, string.sub(s, from, a - 1))
    from = b + 1
  end
  table.insert(out, string.sub(s, from))
  return out
end

function init(args)
  for line in io.lines(args[1]) do
    local method, path, token, idem, body = line:match("^(%S+)\t(%S+)\t(%S*)\t([01])\t(.*)$")
    if method then
      local headers = { ["Accept"] = "application/json", ["User-Agent"] = "bench-agent/1.0" }
      if token ~= "" then headers["Authorization"] = "Bearer " .. token end
      if idem == "1" then headers["Idempotency-Key"] = "bench-" .. PLACEHOLDER end
      if body == "" then body = nil else headers["Content-Type"] = "application/json" end
      n = n + 1
      reqs[n] = parts(wrk.format(method, path, headers, body))
    end
  end
  if n == 0 then error("no requests in " .. args[1]) end
end

function request()
  i = i + 1
  if i > n then i = 1; wraps = wraps + 1 end
  local p = reqs[i]
  if #p == 1 then return p[1] end
  seq = seq + 1
  return table.concat(p, run .. string.format("%08d", seq))
end

function done(summary, latency, requests)
  local w = 0
  for _, t in ipairs(threads) do w = w + (t:get("wraps") or 0) end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"durationUs":%d,"bytes":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latencyUs":{"p50":%.1f,"p90":%.1f,"p99":%.1f,"max":%.1f,"mean":%.1f},"wraps":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean, w))
end
