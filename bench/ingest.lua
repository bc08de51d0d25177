-- wrk script for the ingest benchmark: POST distinct, correctly signed order bodies.
--
--   WRK_RESULT_FILE=out.json wrk -t1 -c4 -d15s -s bench/ingest.lua URL -- BODIES_FILE TOPICS THREADS
--
-- BODIES_FILE has one `<signature> <compact body>` per line (bench/bodies.py writes it).
-- TOPICS is a comma-separated list of X-CommerceLayer-Topic values. Requests go through the
-- bodies in order with the first topic, then all bodies again with the second topic, and so
-- on: a delivery's identity is SHA-256(topic, body), so with B bodies and T topics no two of
-- the first B*T requests are the same delivery (dedup is not what is measured). If the run
-- gets past B*T requests, `wrapped` in the result says so (and the service answers
-- duplicates with 200, which the status counts show).
-- Thread k of n takes bodies k, k+n, k+2n... so threads never send the same body.
-- THREADS must equal wrk's -t. done() writes one JSON object with wrk's counters, latency
-- percentiles and the status counts to $WRK_RESULT_FILE (or stdout).
-- WRK_HOSTS="127.0.0.1:8001,127.0.0.1:8002" (optional) spreads the threads over several servers:
-- thread k connects to host k mod n (wrk takes one URL; its path and Host header stay the URL's).

local threads = {}
local counter = 0
local hosts = {}
for h in string.gmatch(os.getenv("WRK_HOSTS") or "", "[^,]+") do
  hosts[#hosts + 1] = h
end

function setup(thread)
  thread:set("thread_index", counter)
  if #hosts > 0 then
    local h = hosts[(counter % #hosts) + 1]
    local host, port = string.match(h, "^(.+):(%d+)$")
    if host == nil then
      error("WRK_HOSTS entry is not host:port: " .. h)
    end
    thread.addr = wrk.lookup(host, port)[1]
  end
  counter = counter + 1
  table.insert(threads, thread)
end

local sigs, bodies, topics = {}, {}, {}
local nbodies, i, t = 0, 0, 1
statuses = {}
wrapped = 0
sent = 0

function init(args)
  local path = args[1]
  for topic in string.gmatch(args[2] or "orders.place", "[^,]+") do
    topics[#topics + 1] = topic
  end
  local k, n = thread_index, tonumber(args[3] or "1")
  if k == nil or k >= n then
    error("thread index unknown or THREADS (" .. n .. ") is not wrk's -t")
  end
  local line_no = 0
  for line in io.lines(path) do
    if line_no % n == k then
      local space = string.find(line, " ", 1, true)
      nbodies = nbodies + 1
      sigs[nbodies] = string.sub(line, 1, space - 1)
      bodies[nbodies] = string.sub(line, space + 1)
    end
    line_no = line_no + 1
  end
  if nbodies == 0 then
    error("no bodies in " .. path)
  end
end

function request()
  i = i + 1
  if i > nbodies then
    i = 1
    t = t + 1
    if t > #topics then
      t = 1
      wrapped = wrapped + 1
    end
  end
  sent = sent + 1
  return wrk.format("POST", nil, {
    ["Content-Type"] = "application/json",
    ["X-CommerceLayer-Topic"] = topics[t],
    ["X-CommerceLayer-Signature"] = sigs[i],
  }, bodies[i])
end

function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
end

local function json_string(s)
  return '"' .. string.gsub(s, '[%c"\\]', function(c) return string.format("\\u%04x", string.byte(c)) end) .. '"'
end

function done(summary, latency, requests)
  local counts, total_wrapped, total_sent = {}, 0, 0
  for _, thread in ipairs(threads) do
    local s = thread:get("statuses") or {}
    for code, n in pairs(s) do
      counts[code] = (counts[code] or 0) + n
    end
    total_wrapped = total_wrapped + (thread:get("wrapped") or 0)
    total_sent = total_sent + (thread:get("sent") or 0)
  end
  local parts = {}
  for code, n in pairs(counts) do
    parts[#parts + 1] = json_string(code) .. ":" .. n
  end
  local pct = {}
  for _, p in ipairs({50, 75, 90, 99, 99.9}) do
    pct[#pct + 1] = string.format('"%s":%d', tostring(p), latency:percentile(p))
  end
  local e = summary.errors
  local out = string.format(
    '{"duration_us":%d,"requests":%d,"bytes":%d,"sent":%d,"wrapped":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"max":%d,"mean":%.1f,"stdev":%.1f,"percentiles":{%s}},"statuses":{%s}}',
    summary.duration, summary.requests, summary.bytes, total_sent, total_wrapped,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.max, latency.mean, latency.stdev, table.concat(pct, ","), table.concat(parts, ","))
  local result_file = os.getenv("WRK_RESULT_FILE")
  if result_file and result_file ~= "" then
    local f = assert(io.open(result_file, "w"))
    f:write(out, "\n")
    f:close()
  else
    io.write(out, "\n")
  end
end
