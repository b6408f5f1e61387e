-- ember.rpc: named workers calling each other's functions (torch.distributed.rpc
-- for Lua). The agent in C moves frames; this module holds the policy: the
-- rendezvous, which function a request runs, errors, and shutdown.
local core = require "ember.core"
local futures = require "ember.futures"

local rpc = { functions = {} }

local DEFAULT_TIMEOUT = 60
local FOREVER = 365 * 24 * 3600

-- The running world, or nil before init_rpc and after shutdown.
local state = nil

-- Other parts of ember.rpc (RRefs, the REPL's join) hook into the life of the
-- world: hooks[event] is a list of functions run in order.
--   stats(stats, s)           adds counters to rpc.stats()
--   before_barrier(s, opts)   graceful shutdown, before the first barrier
--   after_barrier(s, opts)    graceful shutdown, after it; a second barrier
--                             follows, so work started here is seen through
--   closed(s)                 the agent is closed (always, graceful or not)
local hooks = { stats = {}, before_barrier = {}, after_barrier = {}, closed = {} }

local function run_hooks(event, ...)
  for _, hook in ipairs(hooks[event]) do hook(...) end
end

local function fail(code, fmt, ...)
  error(core.new_error(code, fmt:format(...)), 3)
end

-- --- Classes that travel ----------------------------------------------------

-- Metatables registered with rpc.register_class -> their names.
local registered = setmetatable({}, { __mode = "k" })

-- rpc.register_class(name, mt): instances of mt may travel by value.
function rpc.register_class(name, mt)
  if type(name) ~= "string" or name == "" then
    error("register_class: name must be a non-empty string", 2)
  end
  if type(mt) ~= "table" then
    error("register_class: mt must be a metatable (a table)", 2)
  end
  core.wire_register_class(name, mt)
  registered[mt] = name
  return mt
end

local WorkerInfo = {}
WorkerInfo.__index = WorkerInfo
WorkerInfo.__name = "ember.WorkerInfo"
function WorkerInfo.__tostring(w)
  return ("WorkerInfo(id=%d, name=%s)"):format(w.id, w.name)
end
function WorkerInfo.__eq(a, b)
  return a.id == b.id and a.name == b.name
end
rpc.register_class("ember.WorkerInfo", WorkerInfo)

local function worker_info(name, id)
  return setmetatable({ name = name, id = id }, WorkerInfo)
end

-- A remote function's error: the worker it ran on, its message and traceback.
local RemoteError = {}
RemoteError.__index = RemoteError
RemoteError.__name = "ember.RemoteError"
function RemoteError.__tostring(e)
  local text = ("RemoteError on worker '%s': %s"):format(
    tostring(e.worker), tostring(e.message))
  if e.traceback ~= nil and e.traceback ~= "" then
    text = text .. "\nremote " .. tostring(e.traceback):gsub("^\n", "")
  end
  return text
end
rpc.register_class("ember.RemoteError", RemoteError)
rpc.RemoteError = RemoteError

function rpc.is_remote_error(value)
  return getmetatable(value) == RemoteError
end

local function remote_error(message, traceback, code)
  return setmetatable({
    code = "EREMOTE", remote_code = code, message = message,
    traceback = traceback, worker = state and state.name or "?",
  }, RemoteError)
end

-- Turns whatever a remote function raised into a RemoteError (xpcall handler).
local function to_remote_error(err)
  if getmetatable(err) == RemoteError then return err end
  if core.is_error(err) then
    return remote_error(err.message, err.traceback or debug.traceback("", 2),
      err.code)
  end
  local message = type(err) == "string" and err or tostring(err)
  local traceback
  local at = message:find("\nstack traceback:\n", 1, true)
  if at then
    traceback = message:sub(at + 1)
    message = message:sub(1, at - 1)
  else
    traceback = debug.traceback("", 2)
  end
  return remote_error(message, traceback)
end

-- --- Function references ------------------------------------------------------

-- What a peer may never call: Lua's own libraries (os.execute, io.open,
-- load, require, ...) and ember's internals. The allow-list is "functions of
-- your modules and scripts", so these are refused even though reachable.
local FORBIDDEN_MODULES = {
  _G = true, os = true, io = true, debug = true, package = true,
  coroutine = true, string = true, table = true, math = true, utf8 = true,
  ember = true, ["ember.core"] = true, ["ember.cli"] = true,
  ["ember.cli_native"] = true, ["ember.launch"] = true, ["ember.repl"] = true,
  ["ember.rpc"] = true, ["ember.rref"] = true, ["ember.futures"] = true,
  ["ember.dist_autograd"] = true,
}

-- A function travels as "module:path": the module it is reachable from in
-- package.loaded (the script being run is "__main__"), and the fields leading
-- to it. Only functions reachable that way can be called remotely.
local ref_of = setmetatable({}, { __mode = "k" })
local MAX_SCAN_DEPTH = 4

-- Plain tables and classes (a metatable with __call, as nn.Module:extend
-- makes) are searched; other objects are not.
local function is_searched(t)
  local mt = getmetatable(t)
  return mt == nil or (type(mt) == "table" and rawget(mt, "__call") ~= nil)
end

local function scan_table(t, module, path, depth, seen)
  if seen[t] or depth > MAX_SCAN_DEPTH then return end
  seen[t] = true
  for key, value in next, t do
    if type(key) == "string" and key:match("^[%a_][%w_]*$") then
      local sub = path == "" and key or path .. "." .. key
      if type(value) == "function" then
        if ref_of[value] == nil then ref_of[value] = module .. ":" .. sub end
      elseif type(value) == "table" and is_searched(value) then
        scan_table(value, module, sub, depth + 1, seen)
      end
    end
  end
end

local function scan_loaded()
  local loaded = package.loaded
  local seen = { [loaded] = true }
  local names = {}
  for name, value in next, loaded do
    if type(name) == "string" and name ~= "_G" and name ~= "__main__" then
      names[#names + 1] = name
      if type(value) == "function" and ref_of[value] == nil then
        ref_of[value] = name
      end
    end
  end
  table.sort(names)
  -- Modules first: a function that is also a global of the script is better
  -- named by its module, which any worker can load.
  -- Not through modules no peer may call into ("ember" holds ember.optim
  -- too, which is callable under its own name).
  for _, name in ipairs(names) do
    if type(loaded[name]) == "table" and not FORBIDDEN_MODULES[name] then
      scan_table(loaded[name], name, "", 0, seen)
    end
  end
  if type(loaded.__main__) == "table" then
    scan_table(loaded.__main__, "__main__", "", 0, seen)
  end
end

-- The "module:path" of a function, or nil and why not.
local function function_ref(fn)
  local ref = ref_of[fn]
  if ref == nil then
    scan_loaded()
    ref = ref_of[fn]
  end
  if ref == nil then
    return nil, "the function is not reachable from a loaded module or a " ..
      "global of the main script, so no worker can call it; define it in " ..
      "a module, or as a global of the script (tables with a metatable " ..
      "are searched only when it has __call, as classes do)"
  end
  return ref
end
rpc.function_ref = function_ref

local loaded_refs = {}

-- Functions ember itself serves under reserved names ("ember:rref_fetch"):
-- they are looked up before the allow-list, which refuses ember's modules.
local builtins = {}

-- rpc._builtin(name, fn): serves fn as the function reference "ember:<name>".
function rpc._builtin(name, fn)
  builtins["ember:" .. name] = fn
  return "ember:" .. name
end

local forbidden_functions = {}
for _, name in ipairs { "os", "io", "debug", "package", "coroutine", "string",
    "table", "math", "utf8" } do
  for _, fn in pairs(_G[name] or {}) do
    if type(fn) == "function" then forbidden_functions[fn] = true end
  end
end
for _, name in ipairs { "assert", "collectgarbage", "dofile", "error",
    "getmetatable", "ipairs", "load", "loadfile", "next", "pairs", "pcall",
    "print", "rawequal", "rawget", "rawlen", "rawset", "require", "select",
    "setmetatable", "tonumber", "tostring", "type", "xpcall", "warn" } do
  if type(_G[name]) == "function" then forbidden_functions[_G[name]] = true end
end

-- The function a "module:path" names, loading the module if needed.
local function function_load(ref)
  local fn = loaded_refs[ref] or builtins[ref]
  if fn ~= nil then return fn end
  if type(ref) ~= "string" then
    error(("a function reference must be a string, got %s"):format(type(ref)), 0)
  end
  local module_name, path = ref:match("^([^:]+):?(.*)$")
  if module_name == nil then
    error(("'%s' is not a function reference (expected 'module:path')"):format(
      ref), 0)
  end
  if FORBIDDEN_MODULES[module_name] then
    error(("'%s' may not be called remotely: module '%s' is Lua's or " ..
      "ember's own"):format(ref, module_name), 0)
  end
  local value = package.loaded[module_name]
  if value == nil then
    if module_name == "__main__" then
      error(("unknown function '%s': this worker runs no main script"):format(
        ref), 0)
    end
    local ok, loaded = pcall(require, module_name)
    if not ok then
      error(("unknown function '%s': cannot load module '%s': %s"):format(
        ref, module_name, tostring(loaded)), 0)
    end
    value = loaded
  end
  local walked = module_name
  for field in path:gmatch("[^.]+") do
    if type(value) ~= "table" then
      error(("unknown function '%s': '%s' is a %s, not a table"):format(
        ref, walked, type(value)), 0)
    end
    value = rawget(value, field)
    walked = walked .. (walked == module_name and ":" or ".") .. field
    if value == nil then
      error(("unknown function '%s': '%s' does not exist"):format(ref, walked), 0)
    end
  end
  if type(value) ~= "function" then
    error(("'%s' is a %s, not a function"):format(ref, type(value)), 0)
  end
  if forbidden_functions[value] then
    error(("'%s' may not be called remotely: it is a function of Lua's " ..
      "standard library"):format(ref), 0)
  end
  loaded_refs[ref] = value
  return value
end
rpc.function_load = function_load

core.wire_set_hooks { function_ref = function_ref, function_load = function_load }

-- --- Async execution ------------------------------------------------------------

local async_functions = setmetatable({}, { __mode = "k" })

-- rpc.functions.async_execution(fn): fn returns a future; the reply is sent
-- when that future completes.
function rpc.functions.async_execution(fn)
  if type(fn) ~= "function" then
    error("async_execution: expected a function, got " .. type(fn), 2)
  end
  async_functions[fn] = true
  return fn
end

function rpc.functions.is_async_execution(fn)
  return async_functions[fn] == true
end

-- --- Batching ---------------------------------------------------------------------

-- The longest timer the loop takes (core.timer), in seconds.
local MAX_BATCH_DELAY = 1e6

local function check_batch_options(opts)
  if type(opts) ~= "table" then
    error("rpc.batched: options must be a table {max_size=, max_delay=}, got "
      .. type(opts), 3)
  end
  local size, delay = opts.max_size, opts.max_delay
  if size == nil and delay == nil then
    error("rpc.batched: give max_size (calls per batch), max_delay " ..
      "(seconds a call may wait), or both", 3)
  end
  if size ~= nil and (math.type(size) ~= "integer" or size < 1) then
    error("rpc.batched: max_size must be an integer >= 1, got " ..
      tostring(size), 3)
  end
  if delay ~= nil and (type(delay) ~= "number" or delay ~= delay or delay < 0
      or delay > MAX_BATCH_DELAY) then
    error(("rpc.batched: max_delay must be a number of seconds from 0 to " ..
      "%g, got %s"):format(MAX_BATCH_DELAY, tostring(delay)), 3)
  end
  return size or math.huge, delay
end

-- Keeps the traceback of an error raised by a batch function.
local function with_traceback(err)
  if type(err) == "string" then return debug.traceback(err, 2) end
  return err
end

-- fn's results for the gathered calls: the list, or nil and the error.
local function batch_results(fn, calls)
  local ok, results = xpcall(fn, with_traceback, calls)
  if ok and futures.is_future(results) then
    ok, results = xpcall(results.wait, with_traceback, results)
  end
  if not ok then return nil, results end
  if type(results) ~= "table" then
    return nil, ("rpc.batched: the batch function must return a list of " ..
      "results, one per call; it returned a %s"):format(type(results))
  end
  local count = results.n or #results
  if count ~= #calls then
    return nil, ("rpc.batched: the batch function returned %s results for " ..
      "%d calls"):format(tostring(count), #calls)
  end
  return results
end

-- Runs fn on the gathered calls and hands each caller its own result (or
-- the error); a caller's future completed meanwhile by someone else is left.
local function run_batch(fn, batch)
  local ok, results, err = pcall(batch_results, fn, batch.calls)
  if not ok then results, err = nil, results end
  for i, f in ipairs(batch.futures) do
    if not f:done() then
      if results ~= nil then f:set_result(results[i]) else f:set_exception(err) end
    end
  end
end

-- rpc.batched(fn, {max_size=, max_delay=}): an async_execution function that
-- gathers the calls made to it until it has max_size of them, or max_delay
-- seconds have passed since the first, then runs fn once on the list of
-- their argument tuples (each a table.pack of one call's arguments, in
-- arrival order). fn returns the list of results (or a future of it), one
-- per call, and each caller gets its own (a list that ends in nils says its
-- length in `n`); if fn fails, every call of the batch fails with its error.
-- Calls that come while fn runs start the next batch, so a fn that waits on
-- something may run for two batches at once.
function rpc.batched(fn, opts)
  if type(fn) ~= "function" then
    error("rpc.batched: expected a function, got " .. type(fn), 2)
  end
  local max_size, max_delay = check_batch_options(opts)
  local current

  local function flush(batch)
    if current ~= batch then return end
    current = nil
    if batch.timer ~= nil and not batch.timer:done() then
      batch.timer:set_result(nil)   -- cancels the timer
    end
    core.spawn(run_batch, fn, batch)
  end

  local function gather(...)
    local batch = current
    if batch == nil then
      batch = { calls = {}, futures = {} }
      if max_delay ~= nil and max_size > 1 then
        batch.timer = core.timer(max_delay)
        batch.timer:add_done_callback(function() flush(batch) end)
      end
      current = batch
    end
    local result = core.Future()
    batch.calls[#batch.calls + 1] = table.pack(...)
    batch.futures[#batch.futures + 1] = result
    if #batch.calls >= max_size then flush(batch) end
    return result
  end
  return rpc.functions.async_execution(gather)
end

-- --- Serving requests ------------------------------------------------------------

local unpack = table.unpack

-- What fn gave: for an async_execution function, the value of the future it
-- returned (`what` names it in the error when it returned something else).
local function settle_result(fn, result, what)
  if async_functions[fn] then
    if not futures.is_future(result) then
      error(("%s must return a future, got %s"):format(what, type(result)), 0)
    end
    result = result:wait()
  end
  return result
end

local function run_function(fn, args)
  if type(fn) == "string" then fn = function_load(fn) end
  return settle_result(fn, fn(unpack(args, 1, args.n or #args)),
    "an async_execution function")
end

-- Encodes and sends a message to worker `dest` with f(...): RRefs in it
-- register their forks for `dest` (ember.rref replaces this).
local function send_to(dest, f, ...)
  return f(...)
end

-- The distributed autograd context of each task (coroutine) that has one:
-- the calls a task makes carry it, and the tasks it starts for them inherit
-- it. ember.dist_autograd sets `autograd` (how a call is wrapped, unwrapped
-- and answered in a context).
local task_contexts = setmetatable({}, { __mode = "k" })
local autograd = nil

-- A context closed while the task still runs (its caller gave up waiting)
-- is no context: what the task does from then on is not recorded.
local function current_context()
  local ctx = task_contexts[coroutine.running()]
  if ctx ~= nil and ctx.closed then return nil end
  return ctx
end

-- Runs fn(args) for a request: in the autograd context it came with, if any.
local function run_in_context(peer, fn, args)
  local ctx
  if autograd ~= nil then ctx, args = autograd.receive_request(peer, args) end
  if ctx ~= nil then task_contexts[coroutine.running()] = ctx end
  local result = run_function(fn, args)
  if ctx ~= nil then result = autograd.answer(ctx, peer, result) end
  return result
end

-- Runs one request as a task and sends its answer, whatever happens.
local function serve(agent, peer, id, fn, args)
  local ok, result = xpcall(run_in_context, to_remote_error, peer, fn, args)
  if state == nil or state.agent ~= agent then return end
  local sent, err = pcall(rpc._internal.send_to, peer, agent.respond, agent,
    peer, id, not ok, result)
  if not sent then
    pcall(agent.respond, agent, peer, id, true,
      remote_error("the result cannot be sent back: " .. tostring(err), ""))
  end
end

local spawn = core.spawn

local function on_request(peer, id, decoded, fn, args)
  local s = state
  local agent = s.agent
  if not decoded then
    pcall(agent.respond, agent, peer, id, true,
      remote_error("cannot read the request: " .. tostring(fn), ""))
    return
  end
  if s.early ~= nil then
    -- A peer that knew the world before we did: serve once we know it too.
    s.early[#s.early + 1] = { peer, id, fn, args }
    return
  end
  spawn(serve, agent, peer, id, fn, args)
end

local function serve_early_requests(s)
  local early = s.early
  s.early = nil
  for _, r in ipairs(early) do spawn(serve, s.agent, r[1], r[2], r[3], r[4]) end
end

-- The last fork of a value of ours is gone (ember.rref keeps the values).
local function on_rref_released(id)
  local released = rpc._internal.on_rref_released
  if released then released(id) end
end

-- Where a rank that was lost is recorded, for every worker's graceful
-- shutdown to go on without it (see barrier).
local LOST_KEY = "ember/lost/"

-- Records in the store that world rank `peer` was lost (best effort: the
-- store may be what went). Clients keep their view to themselves: a REPL
-- that lost a worker must not make the world's shutdown skip it.
local function publish_lost(s, peer, why)
  if s.client or s.store == nil or peer >= s.world_size then return end
  local ok, future = pcall(s.store.set, s.store, LOST_KEY .. peer,
    tostring(why))
  if ok then future:add_done_callback(function() end) end
end

local function on_peer_lost(peer, why)
  local s = state
  if s == nil then return end
  local info = s.workers[peer]
  if info then info.lost = true end
  -- A client (a REPL) that vanished does not concern the world's scripts.
  if s.clients[peer] then return end
  -- Every worker's graceful shutdown goes on without it (see barrier).
  publish_lost(s, peer, why)
  if s.on_peer_lost then
    local ok, err = pcall(s.on_peer_lost, info and info.name or peer, why)
    if not ok then
      io.stderr:write("ember: error in on_peer_lost: ", tostring(err), "\n")
    end
  end
end

-- --- Rendezvous ------------------------------------------------------------------

-- Microseconds a worker keeps polling its sockets after a message instead of
-- sleeping: a round trip then costs ~20 us instead of two wake-ups (~100 us
-- on a virtual machine), for a little CPU time while messages flow.
local DEFAULT_BUSY_POLL_US = 100

local function env_number(...)
  for i = 1, select("#", ...) do
    local v = os.getenv((select(i, ...)))
    if v ~= nil and v ~= "" then return tonumber(v), (select(i, ...)) end
  end
  return nil
end

local function check_integer(value, what, min)
  if math.type(value) ~= "integer" and not (type(value) == "number" and
      value == math.floor(value)) then
    error(("init_rpc: %s must be an integer, got %s"):format(what,
      tostring(value)), 3)
  end
  value = math.tointeger(value)
  if value < min then
    error(("init_rpc: %s must be >= %d, got %d"):format(what, min, value), 3)
  end
  return value
end

-- The busy_poll_us option, or EMBER_BUSY_POLL_US, or the default.
local function read_busy_poll(opts, fname)
  local value, text = opts.busy_poll_us, os.getenv("EMBER_BUSY_POLL_US")
  local what = "busy_poll_us"
  if value == nil and text ~= nil and text ~= "" then
    value, what = tonumber(text) or text, "EMBER_BUSY_POLL_US"
  end
  if value == nil then return DEFAULT_BUSY_POLL_US end
  local us = math.tointeger(value)
  if us == nil or us < 0 or us > 1000000 then
    error(("%s: %s must be a whole number of microseconds from 0 to " ..
      "1000000, got %s"):format(fname, what, tostring(value)), 4)
  end
  return us
end

-- Liveness and fault injection: faults= (or EMBER_FAULTS, see core/faults.h),
-- heartbeat_window= and heartbeat_interval= in seconds (or
-- EMBER_HEARTBEAT_WINDOW, EMBER_HEARTBEAT_INTERVAL). A peer silent for the
-- window is lost; the transport's defaults are a 30 s window and a 2 s
-- interval (see EMBER_HEARTBEAT_WINDOW_MS in core/transport.h). Heartbeats
-- go out from the loop: a worker that runs Lua for longer than the window
-- without a wait (which turns the loop) is taken as lost by its peers, so
-- such work wants a larger window.
local DEFAULT_HEARTBEAT_WINDOW = 30

local function read_seconds(opts, field, env, fname)
  local value, what = opts[field], field
  local text = os.getenv(env)
  if value == nil and text ~= nil and text ~= "" then
    value, what = tonumber(text) or text, env
  end
  if value == nil then return nil end
  if type(value) ~= "number" or value ~= value or value <= 0 or value > 1e6 then
    error(("%s: %s must be a number of seconds > 0 (at most 1e6), got %s")
      :format(fname, what, tostring(value)), 5)
  end
  return value, what
end

local function read_liveness(opts, o, fname)
  local faults = opts.faults
  if faults == nil then faults = os.getenv("EMBER_FAULTS") end
  if faults ~= nil and type(faults) ~= "string" then
    error(("%s: faults must be a string, got %s"):format(fname, type(faults)), 4)
  end
  local why = core.check_faults(faults)
  if why then
    error(("%s: bad %s: %s"):format(fname, opts.faults ~= nil and "faults"
      or "EMBER_FAULTS", why), 4)
  end
  o.faults = faults
  local window, wname = read_seconds(opts, "heartbeat_window",
    "EMBER_HEARTBEAT_WINDOW", fname)
  local interval, iname = read_seconds(opts, "heartbeat_interval",
    "EMBER_HEARTBEAT_INTERVAL", fname)
  if interval ~= nil and interval >= (window or DEFAULT_HEARTBEAT_WINDOW) then
    error(("%s: %s (%g s) must be below %s (%g s)"):format(fname, iname,
      interval, wname or "the heartbeat window", window or
      DEFAULT_HEARTBEAT_WINDOW), 4)
  end
  local function ms(seconds)
    return seconds and math.max(1, math.floor(seconds * 1000 + 0.5)) or nil
  end
  o.heartbeat_window_ms, o.heartbeat_interval_ms = ms(window), ms(interval)
end

-- ---- Device maps ------------------------------------------------------------
--
-- init_rpc{device_maps = {worker1 = {[0] = 1}}}, as TensorPipe's: a tensor on
-- this worker's cuda:0 sent to worker1 (in a call's arguments) arrives on
-- worker1's cuda:1; a reply from worker1 to this worker takes the map the
-- other way round. Every other tensor arrives on the receiver's CPU: CPU
-- tensors always, CUDA tensors when no map names their device.

local function local_cuda_count()
  return require("ember.tensor").cuda.device_count()
end

local function device_map_error(fmt, ...)
  error("init_rpc: device_maps" .. fmt:format(...), 4)
end

local function read_device_map(worker, map, have)
  if type(map) ~= "table" then
    device_map_error("['%s'] must be a table {[from] = to} of device "
      .. "indices, got %s", worker, type(map))
  end
  local copy, used = {}, {}
  for from, to in pairs(map) do
    if math.type(from) ~= "integer" or math.type(to) ~= "integer" or
        from < 0 or to < 0 or from > 15 or to > 15 then
      device_map_error("['%s']: %s = %s: device indices are integers from 0 "
        .. "to 15 (cuda:0 is 0)", worker, tostring(from), tostring(to))
    end
    if from >= have then
      device_map_error("['%s'] maps cuda:%d, but this worker has %d CUDA "
        .. "device%s", worker, from, have, have == 1 and "" or "s")
    end
    if used[to] ~= nil then
      device_map_error("['%s'] maps both cuda:%d and cuda:%d to cuda:%d; a "
        .. "map must be one-to-one so that replies can be mapped back", worker,
        math.min(used[to], from), math.max(used[to], from), to)
    end
    used[to] = from
    copy[from] = to
  end
  return copy
end

local function read_device_maps(maps)
  if maps == nil then return {} end
  if type(maps) ~= "table" then
    error("init_rpc: device_maps must be a table {worker = {[from] = to}}, "
      .. "got " .. type(maps), 3)
  end
  local have, out = local_cuda_count(), {}
  for worker, map in pairs(maps) do
    if type(worker) ~= "string" then
      device_map_error(": keys are worker names, got %s", type(worker))
    end
    out[worker] = read_device_map(worker, map, have)
  end
  return out
end

-- What this worker publishes with its address: its maps, which its peers
-- need to map their replies back, and, when it has maps, its CUDA device
-- count (-1 otherwise: a worker without maps does not start the CUDA driver
-- for nothing; a tensor mapped to a device it lacks is then refused when it
-- arrives).
local function device_record(o)
  local count = next(o.device_maps) ~= nil and local_cuda_count() or -1
  return (core.wire_encode({ count = count, maps = o.device_maps }))
end

local function inverse(map)
  local back = {}
  for from, to in pairs(map) do back[to] = from end
  return back
end

-- Checks this worker's maps against the world and hands the agent, peer by
-- peer, where tensors go: by this worker's map for calls, by the inverse of
-- the peer's map for replies.
local function apply_device_maps(o, s, records)
  local maps = o.device_maps or {}
  for worker in pairs(maps) do
    if s.by_name[worker] == nil then
      fail("EINVAL", "init_rpc: device_maps names '%s', which is not a "
        .. "worker of this world", worker)
    end
  end
  for r, record in pairs(records) do
    local peer = s.workers[r].name
    local mine = maps[peer]
    for from, to in pairs(mine or {}) do
      if record.count >= 0 and to >= record.count then
        fail("EINVAL", "init_rpc: device_maps['%s'] maps cuda:%d to cuda:%d, "
          .. "but '%s' has %d CUDA device%s", peer, from, to, peer,
          record.count, record.count == 1 and "" or "s")
      end
    end
    local theirs = record.maps[s.name]
    if mine ~= nil or theirs ~= nil then
      s.agent:set_device_map(r, mine, theirs and inverse(theirs) or nil)
    end
  end
end

local function is_loopback(host)
  return host == "localhost" or host:match("^127%.") ~= nil or host == "::1"
end

local function is_wildcard(host)
  return host == "0.0.0.0" or host == "::"
end

-- The listen rule (the README's trust model): a worker with a secret accepts
-- connections from anywhere, since every peer must prove the secret; one
-- without a secret accepts them on loopback only, unless `listen` (--listen,
-- EMBER_LISTEN) names the address to accept unauthenticated peers on.
local function check_reachable(o, fname)
  if o.secret or o.listen or is_loopback(o.master_addr) then return end
  fail("EINVAL", "%s: the world's master %s is not on this host's loopback, "
    .. "but without a secret this worker accepts connections on loopback "
    .. "only: set EMBER_SECRET (the same on every worker) so that peers must "
    .. "prove it, or name the address to accept unauthenticated peers on with "
    .. "--listen ADDR (EMBER_LISTEN, or the listen= option)", fname,
    o.master_addr)
end

-- Which address peers reach us at, and which one to listen on.
local function listen_address(o, store)
  local bind = o.listen
  if bind == nil then
    bind = (o.secret and not is_loopback(o.master_addr)) and "0.0.0.0"
      or "127.0.0.1"
  end
  if o.host then return o.host, bind end
  if not is_wildcard(bind) then return bind, bind end
  local ok, address = pcall(store.local_address, store)
  if ok and address then return address, bind end
  error("init_rpc: cannot tell this worker's address; set EMBER_HOST", 3)
end

-- One line at start-up on what the worker accepts connections from.
local function announce_listening(o, name, bind, port)
  local where = ("%s:%d"):format(bind, port)
  if o.secret then
    if o.rank == 0 then
      io.stderr:write(("ember: peers must prove EMBER_SECRET; '%s' listens "
        .. "on %s\n"):format(name, where))
    end
  elseif not is_loopback(bind) then
    io.stderr:write(("ember: warning: no EMBER_SECRET: '%s' accepts "
      .. "unauthenticated peers on %s (--listen); any host that reaches it "
      .. "can call its reachable functions\n"):format(name, where))
  elseif o.rank == 0 then
    io.stderr:write(("ember: no EMBER_SECRET: workers accept connections on "
      .. "loopback only ('%s' on %s); --listen ADDR or EMBER_SECRET for "
      .. "other hosts\n"):format(name, where))
  end
end

-- The listen= option, or EMBER_LISTEN: an address to bind, or nil.
local function read_listen(opts, fname)
  local listen = opts.listen
  if listen == nil then listen = os.getenv("EMBER_LISTEN") end
  if listen == "" then listen = nil end
  if listen ~= nil and not require("ember.launch").is_listen_address(listen)
  then
    fail("EINVAL", "%s: listen must be an address such as 0.0.0.0 or "
      .. "10.0.0.5, got %s", fname, type(listen) == "string"
      and ("'" .. listen .. "'") or type(listen))
  end
  return listen
end

local function read_options(name, opts)
  if type(name) ~= "string" or name == "" then
    error("init_rpc: name must be a non-empty string", 3)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error("init_rpc: options must be a table, got " .. type(opts), 3)
  end
  opts = opts or {}
  local o = {}
  o.rank = opts.rank or env_number("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK")
  o.world_size = opts.world_size or
    env_number("WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")
  if o.rank == nil then
    error("init_rpc: no rank: pass {rank=} or set RANK (ember launch does)", 3)
  end
  if o.world_size == nil then
    error("init_rpc: no world size: pass {world_size=} or set WORLD_SIZE", 3)
  end
  o.rank = check_integer(o.rank, "rank", 0)
  o.world_size = check_integer(o.world_size, "world_size", 1)
  if o.rank >= o.world_size then
    error(("init_rpc: rank %d is not below world_size %d"):format(
      o.rank, o.world_size), 3)
  end
  o.master_addr = opts.master_addr or os.getenv("MASTER_ADDR") or "127.0.0.1"
  if type(o.master_addr) ~= "string" or o.master_addr == "" then
    error(("init_rpc: master_addr must be a host name or address, got %s")
      :format(type(o.master_addr)), 3)
  end
  o.master_port = check_integer(opts.master_port or
    tonumber(os.getenv("MASTER_PORT") or "29500"), "master_port", 1)
  if o.master_port > 65535 then
    error(("init_rpc: master_port must be a port from 1 to 65535, got %d")
      :format(o.master_port), 3)
  end
  o.timeout = opts.timeout or DEFAULT_TIMEOUT
  if type(o.timeout) ~= "number" or o.timeout ~= o.timeout or o.timeout < 0 then
    error("init_rpc: timeout must be a number of seconds >= 0", 3)
  end
  o.init_timeout = opts.init_timeout or (o.timeout > 0 and o.timeout or FOREVER)
  o.secret = opts.secret or os.getenv("EMBER_SECRET")
  if o.secret == "" then o.secret = nil end
  o.listen = read_listen(opts, "init_rpc")
  o.on_peer_lost = opts.on_peer_lost
  if o.on_peer_lost ~= nil and type(o.on_peer_lost) ~= "function" then
    error("init_rpc: on_peer_lost must be a function", 3)
  end
  o.host = opts.host or os.getenv("EMBER_HOST")
  o.limits = {
    max_body = opts.max_body, max_tensors = opts.max_tensors,
    max_tensor_bytes = opts.max_tensor_bytes,
    max_message_bytes = opts.max_message_bytes,
  }
  o.busy_poll_us = read_busy_poll(opts, "init_rpc")
  read_liveness(opts, o, "init_rpc")
  o.device_maps = read_device_maps(opts.device_maps)
  return o
end

local function worker_key(rank) return "ember/worker/" .. rank end

local INIT_FAILED = "ember/init_failed"

-- Rank 0 serves the store: before it gives up and takes the store away, it
-- tells the workers that did join why, and gives them a moment to read it.
local function announce_failure(o, store, message, present)
  store:set(INIT_FAILED, message):wait()
  local acks = {}
  for _, r in ipairs(present) do
    if r ~= 0 then acks[#acks + 1] = INIT_FAILED .. "/" .. r end
  end
  pcall(function() store:wait(acks, 2):wait() end)
end

local function wait_for_world(o, store)
  local keys = {}
  for r = 0, o.world_size - 1 do keys[#keys + 1] = worker_key(r) end
  local all = store:wait(keys, o.init_timeout)
  local failed = o.rank ~= 0 and store:get(INIT_FAILED, o.init_timeout) or nil
  if failed then failed:add_done_callback(function() end) end
  futures.wait_any({ all, failed }, {})
  if failed and failed:done() and not failed:failed() then
    store:set(INIT_FAILED .. "/" .. o.rank, "1"):wait()
    fail("ETIMEDOUT", "%s", failed:value())
  end
  local ok, err = pcall(all.wait, all)
  if ok then return keys end
  if core.is_error(err) and err.code == "ETIMEDOUT" then
    local there = store:check(keys):wait()
    local missing, present = {}, {}
    for i = 1, #keys do
      if there[i] then present[#present + 1] = i - 1
      else missing[#missing + 1] = tostring(i - 1) end
    end
    local message = ("init_rpc: timed out after %g s waiting for rank%s %s " ..
      "(of %d) to join at %s:%d"):format(o.init_timeout,
      #missing == 1 and "" or "s", table.concat(missing, ", "), o.world_size,
      o.master_addr, o.master_port)
    if o.rank == 0 then announce_failure(o, store, message, present) end
    fail("ETIMEDOUT", "%s", message)
  end
  error(err, 0)
end

-- Fills s.workers, s.by_name and s.addresses with the world's ranks (clients
-- that joined meanwhile may be there already) and declares them to the agent.
local function read_world(o, s, keys)
  local store, agent = s.store, s.agent
  local workers, by_name, addresses = s.workers, s.by_name, s.addresses
  local records = {}
  for r = 0, o.world_size - 1 do
    local name, host, port, devices = string.unpack("s4s4I4s4",
      store:get(keys[r + 1], o.init_timeout):wait())
    if r ~= o.rank then records[r] = core.wire_decode(devices) end
    if by_name[name] then
      fail("EINVAL", "init_rpc: ranks %d and %d are both named '%s'",
        by_name[name].id, r, name)
    end
    workers[r] = worker_info(name, r)
    by_name[name] = workers[r]
    addresses[r] = { host = host, port = port }
    if r ~= o.rank then agent:add_peer(r, name, host, port) end
  end
  apply_device_maps(o, s, records)
end

-- --- Clients: members beyond the world's ranks --------------------------------
--
-- A running world accepts clients (`ember repl --join`): each takes a fresh id
-- from world_size up (ids are never reused, so clients may come and go),
-- publishes its name and address in the store, and says HELLO to whichever
-- worker it calls first. That worker's transport parks the HELLO and asks us
-- (on_unknown_peer); we look the client up in the store and declare it, which
-- answers the HELLO. The world's barriers count ranks only: a client never
-- holds up the world's shutdown.

local WORLD_SIZE_KEY = "ember/world_size"
local CLIENT_COUNT_KEY = "ember/clients"
local CLIENT_LOOKUP_TIMEOUT = 5

local function client_key(id) return "ember/client/" .. id end
local function client_name_key(name) return "ember/client_name/" .. name end

local function describe(err)
  if core.is_error(err) then return tostring(err.message) end
  return tostring(err)
end

-- Whether peer `id` has left or was lost, as far as this member knows.
local function peer_gone(s, id)
  local counters = s.agent:stats().peers[id]
  return counters ~= nil and (counters.left or counters.lost)
end

-- Declares client `id`, which says it is `name`, once the store confirms it.
local function declare_client(s, id, name)
  local value = s.store:get(client_key(id), CLIENT_LOOKUP_TIMEOUT):wait()
  if state ~= s or s.workers[id] ~= nil then return end
  local known, host, port = string.unpack("s4s4I4", value)
  if known ~= name then
    error(("it joined as '%s'"):format(known), 0)
  end
  local other = s.by_name[known]
  if other ~= nil and not (s.clients[other.id] and peer_gone(s, other.id)) then
    error(("the name '%s' is taken by id %d"):format(known, other.id), 0)
  end
  -- A client may sit at a prompt with its loop stopped: its silence is not
  -- taken for a loss (it still answers heartbeats when it runs).
  s.agent:add_peer(id, known, host, port, false)
  local info = worker_info(known, id)
  s.workers[id], s.by_name[known], s.clients[id] = info, info, true
  s.addresses[id] = { host = host, port = port }
end

-- The transport parked a HELLO from an undeclared id.
local function on_unknown_peer(id, name)
  local s = state
  -- The world's own ranks are declared as soon as this worker reads the world.
  if s == nil or id < s.world_size or s.joining[id] or s.workers[id] then
    return
  end
  s.joining[id] = true
  spawn(function()
    local ok, err = pcall(declare_client, s, id, name)
    s.joining[id] = nil
    if not ok and state == s then
      local why = core.is_error(err) and err.code == "ETIMEDOUT" and
        "no client of that id joined through the store" or describe(err)
      io.stderr:write(("ember[%s]: not accepting '%s' (id %d) as a client: " ..
        "%s\n"):format(s.name, name, id, why))
      io.stderr:flush()
    end
  end)
end

-- The agent of a member named `name` with id `id` (a rank, or a client's).
local function new_agent(name, id, o)
  local limits = o.limits
  return core.agent_new {
    name = name, id = id, secret = o.secret,
    on_request = on_request, on_peer_lost = on_peer_lost,
    on_unknown_peer = on_unknown_peer, on_rref_released = on_rref_released,
    busy_poll_us = o.busy_poll_us,
    faults = o.faults, heartbeat_window_ms = o.heartbeat_window_ms,
    heartbeat_interval_ms = o.heartbeat_interval_ms,
    max_body = limits.max_body, max_tensors = limits.max_tensors,
    max_tensor_bytes = limits.max_tensor_bytes,
    max_message_bytes = limits.max_message_bytes,
  }
end

-- rpc.init_rpc(name, {rank=, world_size=, master_addr=, master_port=,
-- timeout=, secret=, listen=, on_peer_lost=, busy_poll_us=, device_maps=}):
-- joins the world; returns when every worker has joined. Without a secret
-- the worker accepts connections on loopback only unless `listen` (default
-- EMBER_LISTEN, which `ember launch --listen` sets) names another address.
function rpc.init_rpc(name, opts)
  if state ~= nil then
    error(("init_rpc: already initialised as '%s'"):format(state.name), 2)
  end
  local o = read_options(name, opts)
  local s = { name = name, rank = o.rank, world_size = o.world_size,
    timeout = o.timeout, on_peer_lost = o.on_peer_lost, options = o,
    workers = {}, by_name = {}, addresses = {}, early = {}, clients = {},
    joining = {} }
  local ok, err = pcall(function()
    check_reachable(o, "init_rpc")
    if o.rank == 0 then
      s.server = core.store_serve(is_loopback(o.master_addr) and
        o.master_addr or "0.0.0.0", o.master_port)
    end
    s.store = core.store_connect(o.master_addr, o.master_port,
      o.init_timeout):wait()
    local advertised, bind = listen_address(o, s.store)
    s.agent = new_agent(name, o.rank, o)
    state = s
    if o.rank == 0 then
      -- What clients joining later need to find the world's ranks.
      s.store:set(WORLD_SIZE_KEY, tostring(o.world_size)):wait()
    end
    local port = s.agent:listen(bind, 0)
    announce_listening(o, name, bind, port)
    s.store:set(worker_key(o.rank), string.pack("s4s4I4s4", name, advertised,
      port, device_record(o))):wait()
    local keys = wait_for_world(o, s.store)
    read_world(o, s, keys)
    serve_early_requests(s)
  end)
  if not ok then
    state = nil
    if s.agent then s.agent:close() end
    if s.store then s.store:close() end
    if s.server then s.server:close() end
    if s.store and o.rank ~= 0 and core.is_error(err) and
        err.code == "EPEERLOST" then
      -- Nothing but the store's connection is lost during the rendezvous.
      err = core.new_error("EPEERLOST", ("init_rpc: lost the store at %s:%d, " ..
        "which rank 0 serves; rank 0 has probably died (%s)"):format(
        o.master_addr, o.master_port, tostring(err.message)))
    end
    error(err, 2)
  end
end

-- "HOST:PORT" or "[IPv6]:PORT" -> host, port; nil when malformed. The
-- launcher reads --master the same way.
local function parse_address(text)
  if type(text) ~= "string" then return nil end
  return require("ember.launch").parse_address(text)
end

local DEFAULT_JOIN_TIMEOUT = 10

local function read_join_options(address, opts)
  local host, port = parse_address(address)
  if host == nil then
    error(("join: expected the world's address as HOST:PORT (its " ..
      "MASTER_ADDR:MASTER_PORT), got %s"):format(type(address) == "string"
      and ("'" .. address .. "'") or type(address)), 3)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error("join: options must be a table, got " .. type(opts), 3)
  end
  opts = opts or {}
  local name = opts.name
  if name ~= nil and type(name) ~= "function" and
      (type(name) ~= "string" or name == "") then
    error("join: name must be a non-empty string or a function of the id", 3)
  end
  local o = { master_addr = host, master_port = port, name = name,
    timeout = opts.timeout or DEFAULT_TIMEOUT,
    init_timeout = opts.init_timeout or DEFAULT_JOIN_TIMEOUT,
    secret = opts.secret or os.getenv("EMBER_SECRET"),
    host = opts.host or os.getenv("EMBER_HOST"),
    on_peer_lost = opts.on_peer_lost }
  o.listen = read_listen(opts, "join")
  for _, field in ipairs { "timeout", "init_timeout" } do
    if type(o[field]) ~= "number" or o[field] ~= o[field] or o[field] < 0 then
      error(("join: %s must be a number of seconds >= 0"):format(field), 3)
    end
  end
  if o.init_timeout == 0 then o.init_timeout = FOREVER end
  if o.secret == "" then o.secret = nil end
  if o.on_peer_lost ~= nil and type(o.on_peer_lost) ~= "function" then
    error("join: on_peer_lost must be a function", 3)
  end
  o.limits = {
    max_body = opts.max_body, max_tensors = opts.max_tensors,
    max_tensor_bytes = opts.max_tensor_bytes,
    max_message_bytes = opts.max_message_bytes,
  }
  o.busy_poll_us = read_busy_poll(opts, "join")
  read_liveness(opts, o, "join")
  return o
end

-- Waits for a store operation; a timeout raises `message` instead.
local function store_wait(future, message, ...)
  local ok, value = pcall(future.wait, future)
  if ok then return value end
  if core.is_error(value) and value.code == "ETIMEDOUT" then
    fail("ETIMEDOUT", message, ...)
  end
  error(value, 0)
end

local function join_world(o, s)
  local where = o.master_addr .. ":" .. o.master_port
  check_reachable(o, "join")
  local ok, store = pcall(function()
    return core.store_connect(o.master_addr, o.master_port,
      o.init_timeout):wait()
  end)
  if not ok then
    fail(core.is_error(store) and store.code or "EFAILED", "join: %s",
      describe(store))
  end
  s.store = store
  local size = store_wait(store:get(WORLD_SIZE_KEY, o.init_timeout),
    "join: the store at %s announced no world within %g s", where,
    o.init_timeout)
  s.world_size = math.tointeger(tonumber(size))
  if s.world_size == nil or s.world_size < 1 then
    fail("EINVAL", "join: the store at %s holds a bad world size", where)
  end
  o.world_size = s.world_size
  local keys = {}
  for r = 0, s.world_size - 1 do keys[#keys + 1] = worker_key(r) end
  store_wait(store:wait(keys, o.init_timeout),
    "join: the world at %s did not finish starting within %g s", where,
    o.init_timeout)
  local id = s.world_size - 1 + store:add(CLIENT_COUNT_KEY, 1):wait()
  local name = o.name or ("client" .. id)
  if type(name) == "function" then name = name(id) end
  if type(name) ~= "string" or name == "" then
    fail("EINVAL", "join: the name function must return a non-empty string")
  end
  s.name, s.rank, o.rank = name, id, id
  local advertised, bind = listen_address(o, store)
  s.agent = new_agent(name, id, o)
  local port = s.agent:listen(bind, 0)
  read_world(o, s, keys)
  if s.by_name[name] ~= nil or store:add(client_name_key(name), 1):wait() ~= 1
  then
    fail("EINVAL", "join: the name '%s' is taken in the world at %s", name,
      where)
  end
  s.claimed_name = true
  local me = worker_info(name, id)
  s.workers[id], s.by_name[name] = me, me
  s.addresses[id] = { host = advertised, port = port }
  state = s
  store:set(client_key(id), string.pack("s4s4I4", name, advertised, port))
    :wait()
end

-- rpc.join("HOST:PORT", {name=, secret=, listen=, timeout=, init_timeout=,
-- on_peer_lost=}): joins the running world whose rank 0 serves its store at
-- HOST:PORT (MASTER_ADDR:MASTER_PORT) as a client, an extra member with a
-- fresh id from world_size up. `name` is a string or a function of the id
-- (default "client<id>"); `init_timeout` bounds the joining (default 10 s).
-- Then every call works as on a worker; rpc.shutdown() leaves the world
-- without disturbing it.
function rpc.join(address, opts)
  if state ~= nil then
    error(("join: already initialised as '%s'"):format(state.name), 2)
  end
  local o = read_join_options(address, opts)
  local s = { client = true, timeout = o.timeout, options = o,
    on_peer_lost = o.on_peer_lost, workers = {}, by_name = {},
    addresses = {}, clients = {}, joining = {} }
  local ok, err = pcall(join_world, o, s)
  if not ok then
    state = nil
    if s.agent then s.agent:close() end
    if s.store then s.store:close() end
    error(err, 2)
  end
  return s.workers[s.rank]
end

function rpc.is_initialized()
  return state ~= nil
end

local function check_state(fname)
  if state == nil then
    fail("EINVAL", "%s: RPC is not initialised (call rpc.init_rpc first)", fname)
  end
  return state
end

-- The worker id of `to`: a name, a WorkerInfo or an id.
local function peer_id(s, to, fname)
  local kind = type(to)
  if kind == "string" then
    local info = s.by_name[to]
    if info == nil then
      fail("EINVAL", "%s: no worker named '%s'", fname, to)
    end
    return info.id
  elseif kind == "number" then
    if s.workers[to] == nil then
      fail("EINVAL", "%s: no worker with id %s (ids are 0 to %d)", fname,
        tostring(to), s.world_size - 1)
    end
    return math.tointeger(to)
  elseif getmetatable(to) == WorkerInfo then
    return peer_id(s, to.name, fname)
  end
  fail("EINVAL", "%s: 'to' must be a worker name, WorkerInfo or id, got %s",
    fname, kind)
end

-- rpc.get_worker_info([name]): {name=, id=}; this worker's without a name.
function rpc.get_worker_info(name)
  local s = check_state("get_worker_info")
  if name == nil then return s.workers[s.rank] end
  return s.workers[peer_id(s, name, "get_worker_info")]
end

-- The listen address of a worker: host, port (for tools and specs).
function rpc._address_of(to)
  local s = check_state("_address_of")
  local address = s.addresses[peer_id(s, to, "_address_of")]
  return address.host, address.port
end

function rpc.get_worker_infos()
  local s = check_state("get_worker_infos")
  local list = {}
  for r = 0, s.world_size - 1 do list[#list + 1] = s.workers[r] end
  return list
end

-- --- Calls -------------------------------------------------------------------------

local function call_options(s, opts, fname)
  if opts == nil then return s.timeout end
  if type(opts) ~= "table" then
    fail("EINVAL", "%s: options must be a table, got %s", fname, type(opts))
  end
  local timeout = opts.timeout
  if timeout == nil then return s.timeout end
  if type(timeout) ~= "number" or timeout < 0 or timeout ~= timeout then
    fail("EINVAL", "%s: timeout must be a number of seconds >= 0", fname)
  end
  return timeout
end

local function function_arg(fn, fname)
  local kind = type(fn)
  if kind == "string" then return fn end
  if kind == "function" then
    local ref, why = function_ref(fn)
    if ref == nil then fail("EINVAL", "%s: %s", fname, why) end
    return ref
  end
  fail("EINVAL", "%s: fn must be a function or a 'module:path' string, got %s",
    fname, kind)
end

-- --- Arguments --------------------------------------------------------------------
--
-- args is a list; nils inside it travel when it says how long it is with a
-- field n, as table.pack gives ({n = 3, 1, nil, 3}). Without n its length is
-- its largest positive integer key, so {1, nil, 3} sends three values too.
-- The callee unpacks args[1..n].

-- args ready to send: args itself when it has n or no hole, else a copy
-- with n (the caller's table is left as it is).
local function pack_args(args, fname)
  if args == nil then return {} end
  if type(args) ~= "table" then
    fail("EINVAL", "%s: args must be a table (a list), got %s", fname,
      type(args))
  end
  local n = rawget(args, "n")
  if n ~= nil then
    if math.type(n) ~= "integer" or n < 0 then
      fail("EINVAL", "%s: args.n must be an integer >= 0 (the number of " ..
        "arguments), got %s", fname, tostring(n))
    end
    return args
  end
  -- A list with a hole would travel as a map, and the callee's #args would
  -- stop at the hole: such a list gets its n.
  local last, count = 0, 0
  for k in next, args do
    if math.type(k) == "integer" and k >= 1 then
      count = count + 1
      if k > last then last = k end
    end
  end
  if count == last then return args end
  local copy = table.move(args, 1, last, 1, {})
  copy.n = last
  return copy
end

-- A call to this worker itself does not encode its arguments, but what could
-- not travel to another worker fails here too, naming its place in args as
-- the wire's encoder does (args[2].foo).
local function check_travels(value, path, fname, on_path)
  local kind = type(value)
  if kind == "nil" or kind == "boolean" or kind == "number" or
      kind == "string" then
    return
  end
  if kind == "function" then
    local ref, why = function_ref(value)
    if ref == nil then fail("EINVAL", "%s: %s: %s", fname, path, why) end
    return
  end
  local mt = getmetatable(value)
  if kind == "userdata" and core.tensor.is_tensor(value) then return end
  if mt ~= nil and registered[mt] ~= nil then return end
  if kind ~= "table" then
    fail("EINVAL", "%s: %s: cannot send a %s", fname, path, kind)
  end
  if mt ~= nil then
    fail("EINVAL", "%s: %s: a table with a metatable that is not registered " ..
      "with rpc.register_class", fname, path)
  end
  if on_path[value] then
    fail("EINVAL", "%s: %s: a cycle (the table is already being sent)", fname,
      path)
  end
  on_path[value] = true
  for k, v in next, value do
    local key_kind = type(k)
    if key_kind ~= "string" and key_kind ~= "number" and key_kind ~= "boolean" then
      fail("EINVAL", "%s: %s: a table key of type %s cannot be sent (keys " ..
        "may be strings, numbers or booleans)", fname, path, key_kind)
    end
    local sub = key_kind == "string" and k:match("^[%a_][%w_]*$") and
      path .. "." .. k or path .. "[" .. tostring(k) .. "]"
    check_travels(v, sub, fname, on_path)
  end
  on_path[value] = nil
end

-- A call to this worker itself runs here, as a task (in the caller's
-- autograd context: its tensors are the caller's, graph and all).
local function call_self(fn, args, ctx)
  return spawn(function()
    if ctx ~= nil then task_contexts[coroutine.running()] = ctx end
    local ok, result = xpcall(run_function, to_remote_error, fn, args)
    if not ok then error(result, 0) end
    return result
  end)
end

local function call_async(fname, to, fn, args, opts)
  local s = check_state(fname)
  local id = peer_id(s, to, fname)
  local ref = function_arg(fn, fname)
  args = pack_args(args, fname)
  local timeout = call_options(s, opts, fname)
  local ctx = current_context()
  if id == s.rank then
    check_travels(args, "args", fname, {})
    return call_self(ref, args, ctx)
  end
  if ctx ~= nil then args = autograd.wrap_request(ctx, id, args) end
  return rpc._internal.send_to(id, s.agent.call, s.agent, id, ref, args, timeout)
end

-- rpc.rpc_async(to, fn, args, {timeout=}): a future of fn(table.unpack(args,
-- 1, args.n)) run on `to`.
function rpc.rpc_async(to, fn, args, opts)
  return call_async("rpc_async", to, fn, args, opts)
end

-- rpc.rpc_sync(to, fn, args, {timeout=}): the value, or raises its error.
function rpc.rpc_sync(to, fn, args, opts)
  return call_async("rpc_sync", to, fn, args, opts):wait()
end

-- rpc.stats(): counters for calls, bytes and in-flight work, also per peer.
function rpc.stats()
  local s = check_state("stats")
  local stats = s.agent:stats()
  local peers = {}
  for id, counters in pairs(stats.peers) do
    counters.id = id
    peers[s.workers[id] and s.workers[id].name or tostring(id)] = counters
  end
  stats.peers = peers
  stats.name, stats.rank, stats.world_size = s.name, s.rank, s.world_size
  stats.client = s.client == true
  run_hooks("stats", stats, s)
  return stats
end

-- --- Builtins: what a REPL that joined asks of a worker ------------------------

-- ember:stats: this member's rpc.stats(), not counting this request among
-- those being served.
rpc._builtin("stats", function()
  local stats = rpc.stats()
  stats.serving = math.max(0, stats.serving - 1)
  return stats
end)

local EVAL_MAX_DEPTH = 8
local EVAL_MAX_ITEMS = 10000

-- A copy of `value` that can travel: functions, coroutines and userdata that
-- are not tensors become their tostring, and so do tables nested too deep or
-- met again on the way down (a cycle).
local function travelling(value, seen, budget)
  local kind = type(value)
  if kind == "nil" or kind == "boolean" or kind == "number" or
      kind == "string" then
    return value
  end
  if (kind == "userdata" or kind == "table") and getmetatable(value) ~= nil
      and pcall(core.wire_encode, value) then
    return value -- a tensor, an RRef, an instance of a registered class
  end
  if kind ~= "table" or seen[value] or #seen >= EVAL_MAX_DEPTH then
    return tostring(value)
  end
  seen[value] = true
  seen[#seen + 1] = value
  local copy = {}
  for k, v in next, value do
    budget.left = budget.left - 1
    if budget.left < 0 then
      copy["..."] = "(more left out)"
      break
    end
    local key_kind = type(k)
    if key_kind ~= "string" and key_kind ~= "number" and
        key_kind ~= "boolean" then
      k = tostring(k)
    end
    copy[k] = travelling(v, seen, budget)
  end
  seen[#seen] = nil
  seen[value] = nil
  return copy
end

-- ember:eval: runs a text chunk of Lua with this worker's globals and returns
-- its results (a list with n). Only in a world with a secret: without one,
-- anyone who can reach the port could run code here.
rpc._builtin("eval", function(code)
  local s = state
  if s == nil or s.options.secret == nil then
    error(core.new_error("EPERM", "remote eval is disabled: this world " ..
      "has no secret (start the workers with EMBER_SECRET set)"), 0)
  end
  if type(code) ~= "string" then
    error(("remote eval takes a string of Lua source, got %s"):format(
      type(code)), 0)
  end
  local env = package.loaded.__main__
  if type(env) ~= "table" then env = _G end
  local chunk, err = load(code, "=on(" .. s.name .. ")", "t", env)
  if chunk == nil then error(err, 0) end
  local results = table.pack(chunk())
  local budget = { left = EVAL_MAX_ITEMS }
  for i = 1, results.n do results[i] = travelling(results[i], {}, budget) end
  return results
end)

-- --- Extensions ------------------------------------------------------------------

-- Ids a worker makes that are unique in the world (RRefs, distributed
-- autograd contexts): (the maker's rank << 40) | serial, as core/rref.h
-- lays them out; shown as "rank:serial".
local ID_SERIAL_BITS = 40

local function id_creator(id)
  return id >> ID_SERIAL_BITS
end

local function id_text(id)
  return ("%d:%d"):format(id_creator(id), id & ((1 << ID_SERIAL_BITS) - 1))
end

-- What the other parts of ember.rpc share with this module.
rpc._internal = {
  id_creator = id_creator,
  id_text = id_text,
  new_id = function(rank, serial) return (rank << ID_SERIAL_BITS) | serial end,
  send_to = send_to,
  hooks = hooks,
  state = function() return state end,
  check_state = function(fname) return check_state(fname) end,
  peer_id = function(s, to, fname) return peer_id(s, to, fname) end,
  call_options = function(s, opts, fname) return call_options(s, opts, fname) end,
  function_arg = function(fn, fname) return function_arg(fn, fname) end,
  pack_args = function(args, fname) return pack_args(args, fname) end,
  check_travels = function(value, path, fname)
    return check_travels(value, path, fname, {})
  end,
  run_function = run_function,
  to_remote_error = to_remote_error,
  remote_error = remote_error,
  settle_result = settle_result,
  fail = fail,
  task_contexts = task_contexts,
  current_context = current_context,
  set_autograd = function(hooks_) autograd = hooks_ end,
}

-- --- Shutdown ----------------------------------------------------------------------

-- A graceful shutdown goes on without ranks that were lost: a barrier counts
-- a rank as arrived once it is known lost, here (on_peer_lost) or by any
-- worker, which records it in the store under LOST_KEY. A rank still missing
-- after BARRIER_PATIENCE is probed with one call: a dead process refuses the
-- connection (or drops the one we have), which loses it. Without this, every
-- survivor of a SIGKILLed peer waited for it forever.
local BARRIER_PATIENCE = 1
local BARRIER_POLL = 0.25
local PROBE_TIMEOUT = 2
local FAILED_FLUSH_TIMEOUT = 2

rpc._builtin("ping", function() return true end)

-- The store's future's value; the store going away (rank 0, which serves
-- it, died) raises an error that says so rather than the store's own.
local function store_result(s, future, what)
  local ok, value = pcall(future.wait, future)
  if ok then return value end
  if core.is_error(value) and value.code == "EPEERLOST" then
    local o = s.options
    fail("EPEERLOST", "%s: lost the store at %s:%d, which rank 0 ('%s') " ..
      "serves; rank 0 has probably died (%s)", what, o.master_addr,
      o.master_port, s.workers[0] and s.workers[0].name or "?",
      describe(value))
  end
  error(value, 0)
end

-- The ranks that have neither reached the barrier `prefix` nor been lost.
local function missing_ranks(s, prefix)
  local keys = {}
  for r = 0, s.world_size - 1 do
    keys[#keys + 1] = prefix .. r
    keys[#keys + 1] = LOST_KEY .. r
  end
  local there = store_result(s, s.store:check(keys), "shutdown")
  local missing = {}
  for r = 0, s.world_size - 1 do
    local lost = there[2 * r + 2] or s.workers[r].lost
    if lost then s.skipped[r] = true end
    if not there[2 * r + 1] and not lost then missing[#missing + 1] = r end
  end
  return missing
end

local function probe(s, ranks, probed)
  for _, r in ipairs(ranks) do
    if not probed[r] and r ~= s.rank then
      probed[r] = true
      local ok, future = pcall(s.agent.call, s.agent, r, "ember:ping", {},
        PROBE_TIMEOUT)
      if ok then future:add_done_callback(function() end) end
    end
  end
end

local function names_of(s, ranks)
  local names = {}
  for i, r in ipairs(ranks) do
    names[i] = ("'%s' (rank %d)"):format(s.workers[r].name, r)
  end
  return table.concat(names, ", ")
end

-- Waits up to `wait_s` for `keys`; false when they did not all come.
local function store_wait(s, keys, wait_s)
  local future = s.store:wait(keys, wait_s)
  local ok, err = pcall(store_result, s, future, "shutdown")
  if ok then return true end
  if core.is_error(err) and err.code == "ETIMEDOUT" then return false end
  error(err, 0)
end

local function barrier(s, prefix, timeout)
  store_result(s, s.store:set(prefix .. s.rank, "1"), "shutdown")
  local started = core.clock()
  local probed = {}
  while true do
    local missing = missing_ranks(s, prefix)
    if #missing == 0 then return end
    local elapsed = core.clock() - started
    if elapsed >= timeout then
      fail("ETIMEDOUT", "shutdown: timed out after %g s waiting for %s",
        timeout, names_of(s, missing))
    end
    if elapsed >= BARRIER_PATIENCE then probe(s, missing, probed) end
    local waiting = {}
    for i, r in ipairs(missing) do waiting[i] = prefix .. r end
    if store_wait(s, waiting, math.min(timeout - elapsed, BARRIER_POLL)) then
      return
    end
  end
end

-- Says once which lost ranks a graceful shutdown went on without.
local function report_skipped(s)
  local ranks = {}
  for r in pairs(s.skipped) do ranks[#ranks + 1] = r end
  if #ranks == 0 then return end
  table.sort(ranks)
  io.stderr:write(("ember[%s]: shutdown went on without %s, which %s " ..
    "lost\n"):format(s.name, names_of(s, ranks),
    #ranks == 1 and "was" or "were"))
  io.stderr:flush()
end

local function close_all(s)
  if s.agent then s.agent:close() end
  if s.store then s.store:close() end
  if s.server then s.server:close() end
  for _, hook in ipairs(hooks.closed) do pcall(hook, s) end
end

-- Waits for `future` at most `timeout` seconds.
local function wait_within(future, timeout, what)
  if timeout < FOREVER then
    local done = futures.wait_any({ future }, { timeout = timeout })
    if #done == 0 then
      fail("ETIMEDOUT", "shutdown: timed out after %g s waiting for %s",
        timeout, what)
    end
  end
  return future:wait()
end

-- A client leaves alone: its own work done, the hooks run (no barriers: the
-- world does not wait for clients), GOODBYE said so that no worker takes its
-- going for a loss.
local function leave(s, graceful, timeout, opts)
  local ok, err = true, nil
  if graceful then
    ok, err = pcall(function()
      local what = "this client's calls to finish"
      wait_within(s.agent:drained(), timeout, what)
      run_hooks("before_barrier", s, opts)
      wait_within(s.agent:drained(), timeout, what)
      run_hooks("after_barrier", s, opts)
      wait_within(s.agent:drained(), timeout, what)
    end)
  end
  s.agent:goodbye()
  pcall(wait_within, s.agent:goodbyes_done(), math.min(timeout, 10), "GOODBYE")
  pcall(wait_within, s.agent:flushed(), math.min(timeout, 10), "GOODBYE")
  if s.claimed_name then
    -- The name is free again; the store may be gone with the world.
    pcall(function()
      wait_within(s.store:delete(client_name_key(s.name)), 2, "the store")
    end)
  end
  state = nil
  close_all(s)
  if not ok then error(err, 0) end
end

-- rpc.shutdown({graceful=true, timeout=}): with graceful (the default), waits
-- until every worker has finished its outstanding work, then leaves;
-- otherwise fails pending calls at once and leaves. A client (rpc.join)
-- waits for its own work only. Ranks lost on the way (killed, or dead before
-- they reached a barrier) are not waited for: the shutdown ends without
-- them and says so on stderr. If rank 0 died, the barriers cannot be held
-- (it served the store): shutdown raises EPEERLOST saying so, after it has
-- sent its queued replies and its goodbye.
function rpc.shutdown(opts)
  local s = check_state("shutdown")
  if opts ~= nil and type(opts) ~= "table" then
    fail("EINVAL", "shutdown: options must be a table, got %s", type(opts))
  end
  opts = opts or {}
  local graceful = opts.graceful ~= false
  local timeout = opts.timeout or FOREVER
  if type(timeout) ~= "number" or timeout ~= timeout or timeout < 0 then
    fail("EINVAL", "shutdown: timeout must be a number of seconds >= 0, got %s",
      tostring(timeout))
  end
  if s.client then
    local ok, err = pcall(leave, s, graceful, timeout, opts)
    if not ok then error(err, 2) end
    return
  end
  if not graceful then
    state = nil
    close_all(s)
    return
  end
  s.skipped = {}
  local ok, err = pcall(function()
    s.agent:drained():wait()
    run_hooks("before_barrier", s, opts)
    barrier(s, "ember/shutdown/arrived/", timeout)
    s.agent:drained():wait()
    if #hooks.after_barrier > 0 then
      run_hooks("after_barrier", s, opts)
      barrier(s, "ember/shutdown/settled/", timeout)
    end
    s.agent:goodbye()
    s.said_goodbye = true
    -- Acknowledged (GOODBYE is resent until it is): no peer takes our
    -- closing for a loss.
    s.agent:goodbyes_done():wait()
    s.agent:flushed():wait()
    -- Rank 0 serves the store: it leaves last.
    store_result(s, s.store:set("ember/shutdown/left/" .. s.rank, "1"),
      "shutdown")
    if s.rank == 0 then barrier(s, "ember/shutdown/left/", timeout) end
  end)
  if not ok then
    -- Leaving anyway (the store went, or a barrier timed out): the replies
    -- already queued still go out, and peers hear a goodbye, not a loss.
    if not s.said_goodbye then s.agent:goodbye() end
    pcall(wait_within, s.agent:flushed(), FAILED_FLUSH_TIMEOUT, "replies")
  end
  report_skipped(s)
  state = nil
  close_all(s)
  if not ok then error(err, 2) end
end

-- RRefs (rpc.remote, rpc.RRef) live in their own module, which extends this one.
package.loaded["ember.rpc"] = rpc
require "ember.rref"
-- Every worker can take part in distributed autograd (its messages use
-- classes registered there).
require "ember.dist_autograd"

return rpc
