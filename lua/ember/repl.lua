-- An interactive Lua REPL with ember loaded. Each input runs as a task, so
-- wait() and ember.sleep() work at the prompt; results print as lua5.4's do.
-- With --join it is a client of a running world (repl.join): `rpc`,
-- `workers()` and `on(worker, code)` are at hand.
local ember = require "ember"
local core = require "ember.core"

local repl = {}

local function read_line(prompt)
  local ok, native = pcall(require, "ember.cli_native")
  if ok then return native.readline(prompt) end
  io.write(prompt)
  io.flush()
  return io.read("l")
end

-- Compiles a chunk the way lua5.4's REPL does: first as an expression to
-- print, then as statements. Returns the function, or nil and the error, and
-- whether the error only means "the input is not finished yet".
local function compile(source, env)
  local fn = load("return " .. source, "=stdin", "t", env)
  if fn then return fn end
  local err
  fn, err = load(source, "=stdin", "t", env)
  if fn then return fn end
  return nil, err, err:sub(-5) == "<eof>"
end

-- Reads one complete chunk (several lines while it is unfinished).
local function read_chunk(env)
  local source = read_line("> ")
  if source == nil then return nil end
  while true do
    local fn, err, incomplete = compile(source, env)
    if fn or not incomplete then return fn, err end
    local more = read_line(">> ")
    if more == nil then return nil, err end
    source = source .. "\n" .. more
  end
end

local function print_results(results)
  if results.n == 0 then return end
  local parts = {}
  for i = 1, results.n do parts[i] = tostring(results[i]) end
  print(table.concat(parts, "\t"))
end

-- Ctrl-C stops a chunk: the hook raises "interrupted!" in running code, and a
-- chunk that waits gets the same at its next step, while the prompt returns.
local function interrupt_later(co)
  debug.sethook(co, function()
    debug.sethook()
    error("interrupted!", 0)
  end, "", 1)
end

local function run_chunk(fn)
  local co
  -- Before spawning: the task runs at once, up to its first wait.
  core.catch_interrupt(true)
  local task = ember.spawn(function()
    co = coroutine.running()
    return table.pack(fn())
  end)
  local ok, err = pcall(core.run, task)
  core.catch_interrupt(false)
  if not ok and core.is_error(err) and err.code == "EINTR" then
    if co and coroutine.status(co) == "suspended" then interrupt_later(co) end
    task:add_done_callback(function() end) -- its end is expected: no warning
    err = "interrupted!"
  elseif ok then
    ok, err = pcall(task.value, task)
  end
  if ok then
    print_results(err)
  else
    io.stderr:write(tostring(err), "\n")
    io.stderr:flush()
  end
end

-- repl.run{banner=, env=, exit_hint=}: reads, evaluates and prints until end
-- of input. Returns the exit status (0).
function repl.run(options)
  options = options or {}
  local env = options.env or _G
  env.ember = env.ember or ember
  if options.banner then
    print(options.banner .. "  (Ctrl-D to " .. (options.exit_hint or "exit")
      .. ")")
  end
  while true do
    local fn, err = read_chunk(env)
    if fn == nil and err == nil then
      io.write("\n")
      return 0
    end
    if fn then
      run_chunk(fn)
    else
      io.stderr:write(err, "\n")
      io.stderr:flush()
    end
  end
end

-- --- Joining a running world ---------------------------------------------------

local function stderr(...)
  io.stderr:write(...)
  io.stderr:flush()
end

-- Runs fn(...) as a task to completion: true and its result, or false and
-- its error.
local function run_task(fn, ...)
  local task = ember.spawn(fn, ...)
  local ok, err = pcall(core.run, task)
  if ok then return pcall(task.value, task) end
  return false, err
end

local function describe_error(err)
  if core.is_error(err) then return tostring(err.message) end
  return tostring(err)
end

-- "k=v k=v" of a table's plain entries, sorted; a scalar as itself.
local function summary(value)
  if type(value) ~= "table" then return tostring(value) end
  local parts = {}
  for k, v in pairs(value) do
    if type(v) ~= "table" then
      parts[#parts + 1] = tostring(k) .. "=" .. tostring(v)
    end
  end
  table.sort(parts)
  return table.concat(parts, " ")
end

-- Lines of a table with columns aligned (numbers to the right).
local function format_rows(rows)
  local widths = {}
  for _, row in ipairs(rows) do
    for i, cell in ipairs(row) do
      widths[i] = math.max(widths[i] or 0, #cell)
    end
  end
  local lines = {}
  for _, row in ipairs(rows) do
    local cells = {}
    for i, cell in ipairs(row) do
      if i == #row then
        cells[i] = cell
      elseif cell:match("^%-?[%d.]+$") then
        cells[i] = (" "):rep(widths[i] - #cell) .. cell
      else
        cells[i] = cell .. (" "):rep(widths[i] - #cell)
      end
    end
    lines[#lines + 1] = (table.concat(cells, "  "):gsub("%s+$", ""))
  end
  return table.concat(lines, "\n")
end

local Workers = {}
Workers.__index = Workers
Workers.__name = "ember.repl.Workers"

function Workers.__tostring(list)
  local rows = { { "id", "name", "state", "sent", "served", "in flight",
    "serving", "rrefs" } }
  for _, w in ipairs(list) do
    local st = w.stats
    if st then
      rows[#rows + 1] = { tostring(w.id), w.name, w.state,
        tostring(st.calls_sent), tostring(st.calls_served),
        tostring(st.in_flight), tostring(st.serving),
        st.rrefs ~= nil and summary(st.rrefs) or "" }
    else
      rows[#rows + 1] = { tostring(w.id), w.name, w.state, "-", "-", "-", "-",
        "(no stats: " .. tostring(w.error) .. ")" }
    end
  end
  return format_rows(rows)
end

local STATS_TIMEOUT = 5

-- workers(): the world's workers, each with its state as this client sees
-- it (connected, not connected, left, lost) and its own rpc.stats(); prints
-- as a table at the prompt.
local function workers(rpc)
  local infos = rpc.get_worker_infos()
  local calls = {}
  for i, info in ipairs(infos) do
    local ok, future = pcall(rpc.rpc_async, info, "ember:stats", {},
      { timeout = STATS_TIMEOUT })
    calls[i] = ok and future or describe_error(future)
  end
  local list = {}
  for i, info in ipairs(infos) do
    local entry = { id = info.id, name = info.name }
    local call = calls[i]
    if type(call) == "string" then
      entry.error = call
    else
      local ok, stats = pcall(call.wait, call)
      if ok then entry.stats = stats else entry.error = describe_error(stats) end
    end
    list[i] = entry
  end
  -- The state after the calls: a worker we could not reach shows why.
  local peers = rpc.stats().peers
  for _, entry in ipairs(list) do
    local p = peers[entry.name]
    entry.state = p == nil and "not connected" or p.left and "left" or
      p.lost and "lost" or p.connected and "connected" or "not connected"
  end
  return setmetatable(list, Workers)
end

-- on(worker, code): runs the text chunk `code` on `worker` with its globals
-- and returns its results. The worker refuses unless the world has a secret.
local function on(rpc, worker, code)
  if type(code) ~= "string" then
    error("on(worker, code): code must be a string of Lua source, got " ..
      type(code), 3)
  end
  local info = rpc.get_worker_info(worker)
  local ok, results = pcall(rpc.rpc_sync, info, "ember:eval", { code })
  if not ok then
    if rpc.is_remote_error(results) then
      -- The worker's message alone: the traceback would be ember's own.
      local message = tostring(results.message)
      local label = "on(" .. info.name .. ")"
      if message:sub(1, #label) ~= label then
        message = label .. ": " .. message
      end
      error(core.new_error(results.remote_code or "EREMOTE", message), 0)
    end
    error(results, 0)
  end
  return table.unpack(results, 1, results.n)
end

-- repl.join{address=, name=, timeout=, banner=}: joins the world whose store
-- is at `address` (HOST:PORT) as a client, runs the REPL, and leaves the world
-- at end of input. Returns the exit status.
function repl.join(options)
  local rpc = require "ember.rpc"
  local address = options.address
  local ok, err = run_task(rpc.join, address, {
    name = options.name or function(id) return "repl" .. id end,
    init_timeout = options.timeout,
  })
  if not ok then
    stderr("ember repl: cannot join the world at ", tostring(address), ": ",
      (describe_error(err):gsub("^join: ", "")), "\n")
    return 1
  end
  local me = rpc.get_worker_info()
  local names = {}
  for _, info in ipairs(rpc.get_worker_infos()) do
    names[#names + 1] = info.name
  end
  -- One call tells at once whether the world talks to us (a different
  -- secret fails the handshake).
  local answered, why = run_task(rpc.rpc_sync, 0, "ember:stats", {},
    { timeout = STATS_TIMEOUT })
  if not answered then
    stderr("ember repl: warning: worker '", names[1], "' does not answer: ",
      describe_error(why), "\n")
  end
  local env = options.env or _G
  env.rpc = rpc
  env.workers = function() return workers(rpc) end
  env.on = function(worker, code) return on(rpc, worker, code) end
  local banner = ("joined the world at %s as '%s' (id %d); workers: %s\n" ..
    "workers() lists them; on(worker, \"code\") runs code there; rpc is " ..
    "ember.rpc"):format(address, me.name, me.id, table.concat(names, ", "))
  if options.banner then banner = options.banner .. "\n" .. banner end
  repl.run { banner = banner, env = env, exit_hint = "leave" }
  if rpc.is_initialized() then
    -- RRefs still held at the prompt are expected: they are given back.
    local left, why = run_task(rpc.shutdown, { timeout = 10,
      ignore_rref_leak = true })
    if not left then
      stderr("ember repl: left the world at ", address, " without waiting ",
        "for everything: ", describe_error(why), "\n")
      return 0
    end
  end
  print(("left the world at %s"):format(address))
  return 0
end

return repl
