-- Replays the benchmark's request mix, one request per line of the file given as the first
-- script argument (method, path, token, idempotent 0/1, body; tab-separated), in order and
-- round-robin across connections. Every @NNNNNNNNNN@ is replaced by a 12-character value
-- unique to the request (BENCH_RUN, 4 characters, then a counter), so no two requests of a
-- run are identical and no idempotency key repeats, as from healthy agents.
-- BENCH_DELAY_MS > 0 paces each connection (fixed rate).
-- BENCH_RAW=1 (one connection only) also times each request from its write to its answer on a
-- monotonic clock: wrk's own percentiles are corrected for coordinated omission against the
-- connection's mean interval, which at one connection adds more invented samples to a faster
-- target's histogram than to a slower one's (README, What is measured).
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
-- Requests written: those of them never answered (issued - answered, beyond one in flight per
-- connection at the end) are requests that stalled, which no latency figure shows.
issued = 0

local raw = os.getenv("BENCH_RAW") == "1"
local now_us
if raw then
  local ffi = require("ffi")
  ffi.cdef[[ typedef struct { long tv_sec; long tv_nsec; } bench_timespec; int clock_gettime(int, bench_timespec *); ]]
  local ts = ffi.new("bench_timespec")
  -- CLOCK_MONOTONIC
  now_us = function() ffi.C.clock_gettime(1, ts); return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3 end
end
local sent = 0
times = {}
local ntimes = 0
if raw then
  function response(status, headers, body)
    ntimes = ntimes + 1
    times[ntimes] = now_us() - sent
  end
end

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
  issued = issued + 1
  if raw then sent = now_us() end
  i = i + 1
  if i > n then i = 1; wraps = wraps + 1 end
  local p = reqs[i]
  if #p == 1 then return p[1] end
  seq = seq + 1
  return table.concat(p, run .. string.format("%08d", seq))
end

function done(summary, latency, requests)
  local w, issuedAll, all = 0, 0, {}
  for _, t in ipairs(threads) do
    w = w + (t:get("wraps") or 0)
    issuedAll = issuedAll + (t:get("issued") or 0)
    local ts = t:get("times") or {}
    for k = 1, #ts do all[#all + 1] = ts[k] end
  end
  local rawJson = "null"
  if #all > 0 then
    table.sort(all)
    local function pct(p) return all[math.max(1, math.ceil(#all * p / 100))] end
    rawJson = string.format('{"n":%d,"p50":%.1f,"p90":%.1f,"p99":%.1f,"max":%.1f}', #all, pct(50), pct(90), pct(99), all[#all])
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"issued":%d,"durationUs":%d,"bytes":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latencyUs":{"p50":%.1f,"p90":%.1f,"p99":%.1f,"max":%.1f,"mean":%.1f},"rawUs":%s,"wraps":%d}\n',
    summary.requests, issuedAll, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean, rawJson, w))
end
