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
  repl [--join HOST:PORT]    an interactive Lua REPL with ember loaded
                             (--join comes with ember.rpc)
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
    if rest[1] == "--join" then
      stderr("ember repl --join: joining a running world needs ember.rpc, ",
        "which this build does not have yet\n")
      return 2
    elseif rest[1] ~= nil then
      stderr("ember repl: unknown option '", rest[1], "'\n",
        "usage: ember repl [--join HOST:PORT]\n")
      return 2
    end
    return require("ember.repl").run { banner = version_line() }
  elseif command == "launch" then
    return require("ember.launch").main(progname, rest)
  end
  stderr("ember: unknown command '", command, "'\n",
    "run 'ember --help' for the list of commands\n")
  return 2
end

return cli
