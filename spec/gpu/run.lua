-- The GPU checks: every tensor kernel, model and optimizer step that the
-- examples use, computed on the CUDA device and compared with the CPU.
--
--   ember run spec/gpu/run.lua [--filter PATTERN] [--list] [--verbose]
--                              [--cpu]
--
-- Loads every spec/gpu/*_check.lua (each returns a list of {name, fn}; fn
-- gets the context of spec/gpu/context.lua), runs each check in a pcall with
-- the generator seeded, and prints one line per check: "ok NAME",
-- "FAIL NAME: MESSAGE" or "skip NAME: REASON", then, as the last line,
-- "N passed, M failed, K skipped". Exits 1 when a check failed. Without a
-- CUDA device every check is skipped with the reason, and it exits 0.
-- EMBER_CUDA_SIM=1 (or 2) runs them on ember's simulated CUDA devices;
-- --cpu compares the CPU with itself, to test the checks without a device.
-- Needs no busted; spec/gpu_spec.lua runs it under busted.
local ember = require "ember"
local T = ember.tensor

local USAGE = [[
usage: ember run spec/gpu/run.lua [--filter PATTERN] [--list] [--verbose]
                                  [--cpu]

  --filter PATTERN  run only the checks whose "file: name" matches the Lua
                    pattern (or contains it as plain text); may be repeated
  --list            list the checks, run nothing
  --verbose         name each check before it runs; print the traceback of
                    each failure and each check's time
  --cpu             compare the CPU with itself: tests the checks, not a
                    device (checks of the cuda API itself are skipped)
  -h, --help        show this help]]

local function script_dir()
  local path = arg and arg[0]
  if path == nil or path == "-" then
    path = debug.getinfo(1, "S").source:match("^@(.*)$") or ""
  end
  return path:match("^(.*)/[^/]*$") or "."
end

local here = script_dir()
local context = dofile(here .. "/context.lua")

local function parse_args(argv)
  local opts = { filters = {} }
  local i = 1
  while i <= #argv do
    local a = argv[i]
    if a == "--filter" then
      i = i + 1
      if argv[i] == nil then
        io.stderr:write("--filter needs a pattern\n", USAGE, "\n")
        os.exit(2)
      end
      opts.filters[#opts.filters + 1] = argv[i]
    elseif a:match("^%-%-filter=") then
      opts.filters[#opts.filters + 1] = a:match("^%-%-filter=(.*)$")
    elseif a == "--list" then
      opts.list = true
    elseif a == "--cpu" then
      opts.cpu = true
    elseif a == "--verbose" or a == "-v" then
      opts.verbose = true
    elseif a == "-h" or a == "--help" then
      print(USAGE)
      os.exit(0)
    else
      io.stderr:write("unknown argument '", a, "'\n", USAGE, "\n")
      os.exit(2)
    end
    i = i + 1
  end
  return opts
end

-- The *_check.lua files next to this script, sorted.
local function check_files()
  local files = {}
  local pipe = io.popen(('ls -1 "%s" 2>/dev/null'):format(here))
  if pipe then
    for name in pipe:lines() do
      if name:match("_check%.lua$") then files[#files + 1] = name end
    end
    pipe:close()
  end
  table.sort(files)
  return files
end

-- The checks of every file, in order: {name=, fn=} or {name=, load_error=}.
local function load_checks()
  local checks = {}
  for _, file in ipairs(check_files()) do
    local prefix = file:gsub("_check%.lua$", "")
    local ok, list = pcall(dofile, here .. "/" .. file)
    if not ok or type(list) ~= "table" then
      checks[#checks + 1] = { name = prefix .. ": (loading " .. file .. ")",
        load_error = ok and "the file does not return a list of checks"
          or tostring(list) }
    else
      for _, entry in ipairs(list) do
        checks[#checks + 1] = { name = prefix .. ": " .. entry[1],
          fn = entry[2] }
      end
    end
  end
  return checks
end

-- Whether a check's name matches one of the patterns (all, when none).
local function matches(name, patterns)
  if #patterns == 0 then return true end
  for _, pattern in ipairs(patterns) do
    local ok, found = pcall(string.find, name, pattern)
    if (ok and found) or name:find(pattern, 1, true) then return true end
  end
  return false
end

-- "no CUDA device: <why>", from ember's own reason when it gives one.
local function no_device(why)
  why = tostring(why)
  if why:lower():match("^no cuda device") then return why end
  return "no CUDA device: " .. why
end

-- Whether a CUDA device is there; if not, why not.
local function cuda_status()
  local cuda = T.cuda
  if type(cuda) ~= "table" or type(cuda.is_available) ~= "function" then
    return false, no_device("this build's ember.tensor has no cuda module "
      .. "(ember.tensor.cuda is missing)")
  end
  local ok, available = pcall(cuda.is_available)
  if not ok then
    return false, no_device("ember.tensor.cuda.is_available() raised: " ..
      tostring(available))
  end
  if available then return true end
  if type(cuda.unavailable_reason) == "function" then
    local got, why = pcall(cuda.unavailable_reason)
    if got and why ~= nil then return false, no_device(why) end
  end
  -- The core says why there is none when the build has no backend at all.
  local _, why = require("ember.core").cuda_device_count()
  if why ~= nil then
    return false, no_device("this build has no CUDA backend (" ..
      tostring(why) .. ")")
  end
  return false, "no CUDA device found"
end

-- The location of the innermost frame in a *_check.lua file, for messages.
local function check_location(level)
  while true do
    local info = debug.getinfo(level, "Sl")
    if info == nil then return nil end
    if info.short_src:match("_check%.lua$") and info.currentline > 0 then
      return info.short_src:match("([^/]*)$") .. ":" .. info.currentline
    end
    level = level + 1
  end
end

local function run_one(check, g, verbose)
  local where, trace
  local function handler(err)
    if context.is_skip(err) then return err end
    where = check_location(2)
    if verbose then trace = debug.traceback("", 2) end
    return err
  end
  T.manual_seed(1234)
  T.set_grad_enabled(true)
  local ok, err = xpcall(check.fn, handler, g)
  T.set_grad_enabled(true)
  collectgarbage()
  -- A kernel's failure may surface only at the next synchronisation: make
  -- it this check's.
  if not g.cpu_only then
    local synced, sync_err = pcall(T.cuda.synchronize)
    if ok and not synced then
      return "fail", "T.cuda.synchronize() after the check raised: " ..
        tostring(sync_err)
    end
  end
  if ok then return "ok" end
  if context.is_skip(err) then return "skip", context.skip_reason(err) end
  local msg = tostring(err)
  if type(err) == "table" and err.code then
    msg = ("%s (code %s)"):format(msg, tostring(err.code))
  end
  msg = msg:gsub("\n", "\n    ")
  if where and not msg:find(where, 1, true) then
    msg = msg .. " [" .. where .. "]"
  end
  if trace then msg = msg .. "\n    " .. trace:gsub("\n", "\n    ") end
  return "fail", msg
end

local function device_line(g)
  local ok, name = pcall(T.cuda.get_device_name, 0)
  if not ok then
    name = "(get_device_name(0) raised: " .. tostring(name) .. ")"
  end
  local note = g.simulated and " (simulated: EMBER_CUDA_SIM, CPU kernels "
    .. "behind guarded device memory; timings mean nothing)" or ""
  return ("device: %s %s, %d CUDA device%s%s"):format(g.device_name,
    tostring(name), g.device_count, g.device_count == 1 and "" or "s", note)
end

local function main(argv)
  local opts = parse_args(argv)
  local checks = {}
  for _, c in ipairs(load_checks()) do
    if matches(c.name, opts.filters) then checks[#checks + 1] = c end
  end
  if opts.list then
    for _, c in ipairs(checks) do print(c.name) end
    print(("%d checks"):format(#checks))
    return 0
  end

  local available, why = cuda_status()
  local g
  if opts.cpu then
    available = true
    g = context.new { device = "cpu", device_name = "cpu", cpu_only = true,
      root = here .. "/../..", device_count = 0, simulated = false }
    print("device: cpu (--cpu: the CPU against itself; no device is tested)")
  elseif available then
    g = context.new {
      device = "cuda", device_name = "cuda:0", root = here .. "/../..",
      device_count = T.cuda.device_count(),
      simulated = T.cuda.is_simulated and T.cuda.is_simulated() or false,
    }
    print(device_line(g))
  else
    print("device: none (" .. why .. ")")
  end
  io.stdout:flush()

  local passed, failed, skipped = 0, 0, 0
  local started = ember.clock()
  for _, c in ipairs(checks) do
    local status, msg
    local t0 = ember.clock()
    if opts.verbose then
      -- Names the check before it runs, in case it takes the process down.
      print("run " .. c.name)
      io.stdout:flush()
    end
    if c.load_error then
      status, msg = "fail", c.load_error
    elseif not available then
      status, msg = "skip", why
    else
      status, msg = run_one(c, g, opts.verbose)
    end
    local time = opts.verbose and ("  (%.2f s)"):format(ember.clock() - t0)
      or ""
    if status == "ok" then
      passed = passed + 1
      print("ok " .. c.name .. time)
    elseif status == "skip" then
      skipped = skipped + 1
      print("skip " .. c.name .. ": " .. msg)
    else
      failed = failed + 1
      print("FAIL " .. c.name .. ": " .. msg .. time)
    end
    io.stdout:flush()
  end
  if available then
    print(("time: %.1f s"):format(ember.clock() - started))
  end
  if available and not g.cpu_only then
    collectgarbage()
    collectgarbage()
    local ok, stats = pcall(T.cuda.memory_stats)
    if ok and type(stats) == "table" then
      print(("memory: %s bytes allocated after the checks, peak %s, %s raw "
        .. "allocations, %s reuses"):format(tostring(stats.allocated_bytes),
          tostring(stats.peak_bytes), tostring(stats.raw_allocs),
          tostring(stats.reuses)))
    end
  end
  print(("%d passed, %d failed, %d skipped"):format(passed, failed, skipped))
  io.stdout:flush()
  return failed > 0 and 1 or 0
end

local status = main(arg or {})
if status ~= 0 then os.exit(status) end
