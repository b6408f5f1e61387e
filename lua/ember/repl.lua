-- An interactive Lua REPL with ember loaded. Each input runs as a task, so
-- wait() and ember.sleep() work at the prompt; results print as lua5.4's do.
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

-- repl.run{banner=, env=}: reads, evaluates and prints until end of input.
-- Returns the exit status (0).
function repl.run(options)
  options = options or {}
  local env = options.env or _G
  env.ember = env.ember or ember
  if options.banner then print(options.banner .. "  (Ctrl-D to exit)") end
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

return repl
