-- What the worker scripts of the multi-process specs share: "RESULT key value"
-- lines for the spec to read, and small helpers to describe outcomes.
local report = {}

function report.result(key, value)
  io.write("RESULT ", key, " ", tostring(value), "\n")
  io.flush()
end

-- The error fn(...) raises; raises itself if fn succeeds.
function report.error_of(fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error")
  return err
end

-- Polls fn() until it returns true, collecting garbage and sleeping `step`
-- seconds (default 0.05) between tries; returns whether it did within
-- `timeout` seconds (default 10).
function report.eventually(fn, timeout, step)
  local ember = require "ember"
  local deadline = ember.clock() + (timeout or 10)
  while ember.clock() < deadline do
    if fn() then return true end
    collectgarbage()
    ember.sleep(step or 0.05)
  end
  return fn()
end

-- A text on one line (a RESULT value cannot hold a newline).
function report.one_line(text)
  return (tostring(text):gsub("\n", "|"))
end

return report
