-- wrk script for scripts/nacos-compare.sh: one file for every workload and both servers.
--
-- Environment (set by the shell script):
--   BENCH_TARGET    nacos | mast
--   BENCH_WORKLOAD  publish | read | register | list
--   BENCH_TAG       unique per run, so every run publishes/registers new, distinct keys
--
-- Every response is checked (status and body); `done` prints one machine-readable line:
--   RESULT requests=N duration_us=N rps=F p50_us=N p99_us=N non2xx=N bad_body=N sock_errors=N
-- non2xx counts responses whose status is not 2xx; bad_body counts 2xx responses whose body is
-- not what that API answers on success (e.g. r-nacos's "true"/"ok", Mast's JSON with the
-- expected fields, a config read returning the published content, a list with 10 instances).

local target = os.getenv("BENCH_TARGET") or "mast"
local workload = os.getenv("BENCH_WORKLOAD") or "read"
local tag = os.getenv("BENCH_TAG") or "t"

-- Names shared with the shell script's setup step.
local NS = "bench"
local GROUP = "DEFAULT_GROUP"
local READ_ID = "read-target"
local READ_CONTENT = "read-target-content-0123456789"
local LIST_SVC = "list-svc"
local LIST_N = 10
local CONTENT_PAD = string.rep("x", 64)
-- Ephemeral instances that send no beats: Nacos's per-instance timeouts (milliseconds) keep
-- them healthy and listed for the whole run on any Nacos server, as r-nacos's
-- RNACOS_NAMING_*_TIMEOUT_SECOND settings do for all of its instances.
local KEEP_ALIVE_METADATA =
  '{"preserved.heart.beat.timeout":"36000000","preserved.ip.delete.timeout":"72000000"}'


local threads = {}
local thread_no = 0

function setup(thread)
  thread_no = thread_no + 1
  thread:set("tid", thread_no)
  table.insert(threads, thread)
end

local counter = 0
local responses = 0
non2xx = 0
bad_body = 0

local function urlencode(s)
  return (string.gsub(s, "[^%w%-%._~]", function(c)
    return string.format("%%%02X", string.byte(c))
  end))
end

local function form(t)
  local parts = {}
  for _, kv in ipairs(t) do
    table.insert(parts, kv[1] .. "=" .. urlencode(kv[2]))
  end
  return table.concat(parts, "&")
end

local FORM = { ["Content-Type"] = "application/x-www-form-urlencoded" }
local JSON = { ["Content-Type"] = "application/json" }

-- n -> a distinct IPv4 address (10.a.b.c) and port, so that r-nacos (which keys an instance
-- by ip#port#cluster) and Mast (keyed by id) both see a new instance each time.
local function ip_of(n)
  local c = n % 250 + 1
  local b = math.floor(n / 250) % 250
  local a = math.floor(n / 62500) % 250
  return string.format("10.%d.%d.%d", a, b, c)
end

local function publish_req(id)
  local content = "v-" .. id .. "-" .. CONTENT_PAD
  if target == "nacos" then
    return wrk.format("POST", "/nacos/v1/cs/configs", FORM, form({
      { "dataId", id }, { "group", GROUP }, { "content", content }, { "tenant", NS },
    }))
  end
  return wrk.format("PUT", "/mast/v1/configs/" .. NS .. "/" .. GROUP .. "/" .. id, JSON,
    '{"content":"' .. content .. '","format":"text"}')
end

local function register_req(svc, id, n)
  local ip = ip_of(n)
  local port = 8000 + (tid or 1)
  if target == "nacos" then
    return wrk.format("POST", "/nacos/v1/ns/instance", FORM, form({
      { "serviceName", svc }, { "ip", ip }, { "port", tostring(port) },
      { "ephemeral", "true" }, { "namespaceId", NS }, { "metadata", KEEP_ALIVE_METADATA },
    }))
  end
  return wrk.format("POST", "/mast/v1/services/" .. svc .. "/instances", JSON,
    string.format('{"id":"%s","host":"%s","port":%d,"ttl":3600}', id, ip, port))
end

local read_req_str, list_req_str

function init(args)
  if target == "nacos" then
    read_req_str = wrk.format("GET", "/nacos/v1/cs/configs?dataId=" .. READ_ID .. "&group=" .. GROUP .. "&tenant=" .. NS)
    list_req_str = wrk.format("GET", "/nacos/v1/ns/instance/list?serviceName=" .. LIST_SVC .. "&namespaceId=" .. NS)
  else
    read_req_str = wrk.format("GET", "/mast/v1/configs/" .. NS .. "/" .. GROUP .. "/" .. READ_ID)
    list_req_str = wrk.format("GET", "/mast/v1/services/" .. LIST_SVC .. "/instances")
  end
end

function request()
  counter = counter + 1
  local n = counter
  if workload == "read" then
    return read_req_str
  elseif workload == "list" then
    return list_req_str
  elseif workload == "publish" then
    return publish_req(string.format("pub-%s-%d-%d", tag, tid, n))
  elseif workload == "register" then
    -- 100 services per run, instances spread over them; n keeps ip:port distinct per thread
    return register_req(string.format("reg-%s-%d", tag, n % 100),
      string.format("i-%d-%d", tid, n), n)
  end
  return read_req_str
end

-- Occurrences of the plain string `pat` in `body` (string.find with plain=true: no pattern
-- matching and no copy of the body, so the check costs wrk little CPU per response).
local function count(body, pat)
  local k, at = 0, 1
  while true do
    local s, e = string.find(body, pat, at, true)
    if not s then return k end
    k = k + 1
    at = e + 1
  end
end

local function read_ok(body)
  if target == "nacos" then return body == READ_CONTENT end
  return string.find(body, '"content":"' .. READ_CONTENT .. '"', 1, true) ~= nil
end

local function publish_ok(status, body)
  if target == "nacos" then return body == "true" end
  return string.find(body, '"md5":"', 1, true) ~= nil and string.find(body, '"version":', 1, true) ~= nil
end

local function register_ok(status, body)
  if target == "nacos" then return body == "ok" end
  return status == 201 and string.find(body, '"leaseId"', 1, true) ~= nil
end

local function body_ok(status, body)
  if workload == "read" then
    return read_ok(body)
  elseif workload == "list" then
    if target == "nacos" then return count(body, '"instanceId"') == LIST_N end
    return count(body, '"leaseId"') == LIST_N
  elseif workload == "publish" then
    return publish_ok(status, body)
  elseif workload == "register" then
    return register_ok(status, body)
  end
  return true
end

function response(status, headers, body)
  responses = responses + 1
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  elseif not body_ok(status, body) then
    bad_body = bad_body + 1
    if bad_body <= 3 then
      io.stderr:write(string.format("bad body (%s %s, status %d): %s\n", target, workload, status,
        string.sub(body or "", 1, 200)))
    end
  end
  if non2xx > 0 and non2xx <= 3 and status >= 300 then
    io.stderr:write(string.format("non-2xx (%s %s): %d %s\n", target, workload, status,
      string.sub(body or "", 1, 200)))
  end
end

function done(summary, latency, requests)
  local n2, bad = 0, 0
  for _, t in ipairs(threads) do
    n2 = n2 + (t:get("non2xx") or 0)
    bad = bad + (t:get("bad_body") or 0)
  end
  local e = summary.errors
  local sock = e.connect + e.read + e.write + e.timeout
  local secs = summary.duration / 1e6
  io.write(string.format(
    "RESULT requests=%d duration_us=%d rps=%.1f p50_us=%d p99_us=%d non2xx=%d bad_body=%d sock_errors=%d\n",
    summary.requests, summary.duration, summary.requests / secs,
    latency:percentile(50), latency:percentile(99), n2, bad, sock))
end
