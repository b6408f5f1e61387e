-- The `ember` command line: run a script as a task on the loop, or open a REPL.
local ember = require "ember"
local core = require "ember.core"

local cli = {}

local USAGE = [[
usage: ember COMMAND [ARGS]

commands:
  run SCRIPT [ARGS]          run a Lua script as a task on ember's loop
                             (SCRIPT "-" reads it from standard input)
  launch -n N SCRIPT [ARGS]  start N workers, each running SCRIPT with its
                             rank (see ember launch --help)
  repl [--join HOST:PORT]    an interactive Lua REPL with ember loaded; with
                             --join, a client of a running world (see
                             ember repl --help)
  help                       show this help

options:
  -h, --help                 show this help
  -v, --version              show the version

Scripts get their arguments in `arg` and `...`, as with lua5.4. wait() and
ember.sleep() pause the script without blocking the loop. The exit status is 1
when the script raises an error; the error and its traceback go to stderr.]]

local function stderr(...)
  io.stderr:write(...)
  io.stderr:flush()
end

local function describe_error(err)
  if type(err) == "string" then return err end
  return tostring(err)
end

-- A script that leaves RPC running: shut it down as the script ends, politely
-- when it succeeded, at once when it failed.
local function shutdown_rpc(succeeded)
  local rpc = package.loaded["ember.rpc"]
  if rpc == nil or not rpc.is_initialized() then return true end
  local task = ember.spawn(rpc.shutdown, { graceful = succeeded })
  local ok, err = pcall(core.run, task)
  if ok then ok, err = pcall(task.value, task) end
  if not ok then
    stderr("ember: rpc.shutdown at the end of the script failed: ",
      describe_error(err), "\n")
  end
  return ok
end

-- Runs `task` (a future) to completion, then the loop until nothing is left.
-- Returns the exit status.
local function finish(task, name)
  local ok, err = pcall(core.run, task)
  if not ok then
    if core.is_error(err) and err.code == "EDEADLOCK" then
      stderr("ember: ", name, " is blocked: it waits on a future that ",
        "nothing left on the loop can complete\n")
    else
      stderr("ember: ", describe_error(err), "\n")
    end
    shutdown_rpc(false)
    return 1
  end
  local done, value = pcall(task.value, task)
  if not done then
    stderr("ember: ", describe_error(value), "\n")
    shutdown_rpc(false)
    return 1
  end
  if not shutdown_rpc(true) then return 1 end
  -- Timers and tasks the script left running still get to finish.
  core.run()
  return 0
end

local function run_script(progname, args)
  local script = args[1]
  if script == nil then
    stderr("ember run: missing SCRIPT\n", "usage: ember run SCRIPT [ARGS]\n")
    return 2
  end
  local chunk, err = loadfile(script ~= "-" and script or nil)
  if chunk == nil then
    stderr("ember run: cannot load ", script, ": ", err, "\n")
    return 1
  end
  local script_arg = { [-2] = progname, [-1] = "run" }
  for i = 1, #args do script_arg[i - 1] = args[i] end
  _G.arg = script_arg
  -- The script's globals are module "__main__" for function references.
  package.loaded.__main__ = _G
  -- Launched workers write into pipes: keep their lines flowing.
  if os.getenv("EMBER_LAUNCHED") == "1" then io.stdout:setvbuf("line") end
  return finish(ember.spawn(chunk, table.unpack(args, 2)), script)
end

local REPL_USAGE = [==[
usage: ember repl [--join HOST:PORT [--name NAME] [--timeout SECONDS]]

An interactive Lua REPL with ember loaded. Each input runs as a task, so
wait() works at the prompt; Ctrl-C stops the running input, Ctrl-D leaves.

With --join, the REPL joins the running world whose rank 0 serves its store
at HOST:PORT (the workers' MASTER_ADDR:MASTER_PORT) as an extra member,
named repl<ID> unless --name says otherwise, and these are at hand:
  rpc                 ember.rpc: rpc.rpc_sync("worker1", "mod:fn", {...}),
                      rpc.rpc_async, rpc.remote, rpc.stats(), ...
  workers()           the workers: id, name, state as seen from here
                      (connected, not connected, left, lost) and each one's
                      own counters (calls sent and served, in flight, RRefs)
  on(worker, "code")  runs a text chunk of Lua on the worker, with its
                      globals, and returns the results; only in a world with
                      a secret (EMBER_SECRET, which the REPL needs too)
Ctrl-D leaves the world; the workers carry on.

options:
  --join HOST:PORT    the world to join
  --name NAME         this member's name (default repl<ID>)
  --timeout SECONDS   how long to try to join (default 10)
  -h, --help          show this help]==]

local REPL_SHORT_USAGE =
  "usage: ember repl [--join HOST:PORT [--name NAME] [--timeout SECONDS]]\n"

-- ember repl ARGS -> the exit status.
local function repl_main(args, banner)
  local options = {}
  local i = 1
  while i <= #args do
    local arg = args[i]
    local name, value = arg:match("^(%-%-[%w-]+)=(.*)$")
    name = name or arg
    if name == "-h" or name == "--help" then
      print(REPL_USAGE)
      return 0
    elseif name == "--join" or name == "--name" or name == "--timeout" then
      if value == nil then
        i = i + 1
        value = args[i]
      end
      if value == nil or value == "" then
        stderr("ember repl: ", name, " needs a value\n", REPL_SHORT_USAGE)
        return 2
      end
      options[name:sub(3)] = value
    else
      stderr("ember repl: unknown option '", arg, "'\n", REPL_SHORT_USAGE)
      return 2
    end
    i = i + 1
  end
  if options.join == nil then
    if options.name or options.timeout then
      stderr("ember repl: --name and --timeout go with --join\n")
      return 2
    end
    return require("ember.repl").run { banner = banner }
  end
  if require("ember.launch").parse_address(options.join) == nil then
    stderr("ember repl: --join expects HOST:PORT (the world's MASTER_ADDR:",
      "MASTER_PORT), got '", options.join, "'\n")
    return 2
  end
  local timeout = tonumber(options.timeout or "10")
  if timeout == nil or timeout ~= timeout or timeout <= 0 or
      timeout == math.huge then
    stderr("ember repl: --timeout expects a number of seconds > 0, got '",
      tostring(options.timeout), "'\n")
    return 2
  end
  return require("ember.repl").join { address = options.join,
    name = options.name, timeout = timeout, banner = banner }
end

local function version_line()
  return ("ember %s (%s)"):format(ember.version, _VERSION)
end

function cli.main(argv)
  local progname = argv[0] or "ember"
  local command = argv[1]
  local rest = {}
  for i = 2, #argv do rest[#rest + 1] = argv[i] end

  if command == nil then
    stderr(USAGE, "\n")
    return 2
  elseif command == "-h" or command == "--help" or command == "help" then
    print(USAGE)
    return 0
  elseif command == "-v" or command == "--version" then
    print(version_line())
    return 0
  elseif command == "run" then
    return run_script(progname, rest)
  elseif command == "repl" then
    return repl_main(rest, version_line())
  elseif command == "launch" then
    return require("ember.launch").main(progname, rest)
  end
  stderr("ember: unknown command '", command, "'\n",
    "run 'ember --help' for the list of commands\n")
  return 2
end

return cli
