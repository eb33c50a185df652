-- wrk script for bench/checkin.py.
-- Arguments after `--`: MODE NTHREADS [DEVICES_FILE BODY_FILE]
-- Environment BENCH_RATE (requests/s in all): unset, as fast as the server answers (closed loop: each
-- connection sends when its answer came); set, paced (each thread keeps a schedule of slots and sends on
-- time, at once when behind), so latency is measured at that load rather than at saturation.
--   MODE health:  GET /health (the ceiling: a trivial JSON view on the same server)
--   MODE checkin: POST /api/v1/devices/checkin as the devices in DEVICES_FILE ("credential etag" per line,
--                 each thread takes every NTHREADS-th device), with If-None-Match and the body in BODY_FILE.
--                 Every {START} and {END} in the body (one pair per metric window) becomes a window time (now - 60 s,
--                 now), rebuilt once a second.
-- done() prints one line `WRK_RESULT {json}` for the Python side.

local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

local function iso(t)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", t)
end

-- A monotonic clock in milliseconds (Lua's os.time() has whole seconds only); wrk is built on LuaJIT.
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]]
local timespec = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, timespec) -- CLOCK_MONOTONIC
  return tonumber(timespec.tv_sec) * 1000 + tonumber(timespec.tv_nsec) / 1e6
end

function init(args)
  mode = args[1]
  local nthreads = tonumber(args[2])
  ok, notmod, other, late = 0, 0, 0, 0
  if rate then
    interval = 1000 * nthreads / rate
  end
  if mode == "health" then
    fixed = wrk.format("GET", "/health")
    return
  end
  local file = assert(io.open(args[4], "rb"))
  local body = file:read("*a")
  file:close()
  -- The body cut at every {START} and {END} (one pair per metric window): parts[i] comes before marks[i].
  if body:find("{START}", 1, true) then
    parts, marks = {}, {}
    local rest = body
    while true do
      local s, e = rest:find("{START}", 1, true), rest:find("{END}", 1, true)
      local at, mark, length
      if s and (not e or s < e) then
        at, mark, length = s, "start", 7
      elseif e then
        at, mark, length = e, "end", 5
      else
        break
      end
      parts[#parts + 1], marks[#marks + 1], rest = rest:sub(1, at - 1), mark, rest:sub(at + length)
    end
    parts[#parts + 1] = rest
    templated = true
  end
  devices = {}
  local n = 0
  for line in io.lines(args[3]) do
    if n % nthreads == id then
      local credential, etag = line:match("^(%S+)%s+(%S+)")
      local headers = {
        ["Authorization"] = "Device " .. credential,
        ["Content-Type"] = "application/json",
        ["If-None-Match"] = etag,
      }
      -- A fixed body: the whole request is built once per device, so wrk spends no Lua time per request.
      devices[#devices + 1] = templated and headers or wrk.format("POST", "/api/v1/devices/checkin", headers, body)
    end
    n = n + 1
  end
  assert(#devices > 0, "no devices for thread " .. id)
  index, last_t, sent = 0, -1, 0
end

function request()
  if fixed then
    return fixed
  end
  index = index % #devices + 1
  if not templated then
    return devices[index]
  end
  local t = os.time()
  if t ~= last_t then
    last_t = t
    start_now, end_now = iso(t - 60):sub(1, -2), iso(t):sub(1, -2)
  end
  -- The server stores a window once per (device, model, version, window_start): a device sending twice
  -- within a second (a small fleet) must not send the same window twice, so each request's is its own.
  sent = sent + 1
  local fraction = string.format(".%06dZ", sent % 1000000)
  local pieces = {}
  for i, mark in ipairs(marks) do
    pieces[#pieces + 1] = parts[i]
    pieces[#pieces + 1] = (mark == "start" and start_now or end_now) .. fraction
  end
  pieces[#pieces + 1] = parts[#parts]
  return wrk.format("POST", "/api/v1/devices/checkin", devices[index], table.concat(pieces))
end

-- wrk waits on a timer before every request when the script has delay(), so only paced runs define it.
rate = tonumber(os.getenv("BENCH_RATE") or "")
if rate then
  function delay()
    local now = now_ms()
    next_slot = (next_slot or now) + interval
    if next_slot < now then
      late = late + 1
      return 0
    end
    return next_slot - now
  end
end

function response(status, headers, body)
  if status == 304 then
    notmod = notmod + 1
  elseif status >= 200 and status < 300 then
    ok = ok + 1
  else
    other = other + 1
    if other <= 3 then
      io.stderr:write("unexpected answer " .. status .. ": " .. string.sub(body or "", 1, 300) .. "\n")
    end
  end
end

function done(summary, latency, requests)
  local answered_ok, answered_304, answered_other, sent_late = 0, 0, 0, 0
  for _, thread in ipairs(threads) do
    sent_late = sent_late + thread:get("late")
    answered_ok = answered_ok + thread:get("ok")
    answered_304 = answered_304 + thread:get("notmod")
    answered_other = answered_other + thread:get("other")
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"ok": %d, "not_modified": %d, "other": %d, "connect_errors": %d, "read_errors": %d, "write_errors": %d, ' ..
    '"timeouts": %d, "late": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, answered_ok, answered_304, answered_other, e.connect, e.read, e.write, e.timeout, sent_late))
end
