-- ember: a distributed RPC runtime for Lua 5.4.
-- This module gathers the public API; submodules load on first use.
local core = require "ember.core"

local ember = {
  version = core.version,
  futures = require "ember.futures",
  Error = core.Error,
}

-- ember.spawn(fn, ...): runs fn(...) as a light thread (a coroutine on the
-- loop) right away; returns a future of its first result or its error.
ember.spawn = core.spawn

local function check_seconds(seconds, fname)
  -- The loop's timers go up to 1e9 s (core.timer's bound).
  if type(seconds) ~= "number" or not (seconds >= 0 and seconds < 1e9) then
    error(("%s: seconds must be a number from 0 to 1e9, got %s"):format(
      fname, tostring(seconds)), 3)
  end
end

-- ember.sleep(seconds): pauses the current task; outside any task it runs the
-- loop for that long.
function ember.sleep(seconds)
  check_seconds(seconds, "ember.sleep")
  core.timer(seconds):wait()
end

-- ember.after(seconds, fn, ...): runs fn(...) as a task after a delay; returns
-- a future of its result.
function ember.after(seconds, fn, ...)
  check_seconds(seconds, "ember.after")
  if type(fn) ~= "function" then
    error("ember.after: fn must be a function, got " .. type(fn), 2)
  end
  local timer = core.timer(seconds)
  return core.spawn(function(...)
    timer:wait()
    return fn(...)
  end, ...)
end

-- ember.clock(): monotonic wall-clock seconds, for measuring time.
ember.clock = core.clock

-- ember.run([future]): runs the loop until the future completes, or until
-- nothing is left to do. Scripts under `ember run` never need it.
ember.run = core.run

ember.cuda = {}
-- Number of CUDA devices this build can use (0 without CUDA or a GPU).
function ember.cuda.device_count()
  return (core.cuda_device_count())
end
function ember.cuda.is_available()
  return core.cuda_device_count() > 0
end

-- Submodules that later parts of ember add (rpc, tensor, nn, ...) load on
-- first use: ember.rpc is require "ember.rpc".
local lazy = { rpc = "ember.rpc", tensor = "ember.tensor", nn = "ember.nn",
  optim = "ember.optim", distributions = "ember.distributions",
  envs = "ember.envs", options = "ember.options",
  dist_autograd = "ember.dist_autograd", dist_optim = "ember.dist_optim" }

return setmetatable(ember, {
  __index = function(t, key)
    local name = lazy[key]
    if name == nil then return nil end
    local module = require(name)
    rawset(t, key, module)
    return module
  end,
})
