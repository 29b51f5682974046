-- Replays the benchmark's request mix, one pre-formatted request per line of the file given
-- as the first script argument (method, path, token, body; tab-separated), in order and
-- round-robin across connections. BENCH_DELAY_MS > 0 paces each connection (fixed rate).
-- done() prints one JSON line, prefixed by BENCH_JSON, for the harness to parse.

local pace = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
if pace > 0 then
  function delay() return pace end
end

local threads = {}
function setup(thread) table.insert(threads, thread) end

local reqs = {}
local n = 0
local i = 0
wraps = 0

function init(args)
  for line in io.lines(args[1]) do
    local method, path, token, body = line:match("^(%S+)\t(%S+)\t(%S*)\t(.*)$")
    if method then
      local headers = { ["Accept"] = "application/json", ["User-Agent"] = "bench-agent/1.0" }
      if token ~= "" then headers["Authorization"] = "Bearer " .. token end
      if body == "" then body = nil else headers["Content-Type"] = "application/json" end
      n = n + 1
      reqs[n] = wrk.format(method, path, headers, body)
    end
  end
  if n == 0 then error("no requests in " .. args[1]) end
end

function request()
  i = i + 1
  if i > n then i = 1; wraps = wraps + 1 end
  return reqs[i]
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
