-- Futures (torch.futures for Lua): the Future type lives in C (ember.core);
-- this module adds the functions over lists of futures.
local core = require "ember.core"

local futures = {}

local MAX_TIMER = 1e9

-- futures.Future(): a new pending future.
futures.Future = core.Future

local future_mt = getmetatable(core.Future())

local function is_future(value)
  return getmetatable(value) == future_mt
end
futures.is_future = is_future

local function check_list(list, fname)
  if type(list) ~= "table" then
    error(("%s: expected a list of futures, got %s"):format(fname, type(list)), 3)
  end
  for i = 1, #list do
    if not is_future(list[i]) then
      error(("%s: list[%d] is not a future (%s)"):format(
        fname, i, type(list[i])), 3)
    end
  end
  return #list
end

-- futures.collect_all(list): a future of `list` that completes when every
-- future in it is done, failed ones included.
function futures.collect_all(list)
  local count = check_list(list, "collect_all")
  local all = core.Future()
  local remaining = count
  if remaining == 0 then
    all:set_result(list)
    return all
  end
  local function one_done()
    remaining = remaining - 1
    if remaining == 0 then all:set_result(list) end
  end
  for i = 1, count do list[i]:add_done_callback(one_done) end
  return all
end

-- futures.wait_all(list): the list of values, in order; raises the error of
-- the first future to fail, without waiting for the rest.
function futures.wait_all(list)
  local count = check_list(list, "wait_all")
  local values = { n = count }
  if count == 0 then return values end
  local all = core.Future()
  local remaining = count
  local function one_done(f)
    if all:done() then return end
    local ok, err = pcall(f.value, f)
    if not ok then
      all:set_exception(err)
      return
    end
    remaining = remaining - 1
    if remaining == 0 then all:set_result(true) end
  end
  for i = 1, count do list[i]:add_done_callback(one_done) end
  all:wait()
  for i = 1, count do values[i] = list[i]:value() end
  return values
end

-- futures.wait_any(list, {count=, timeout=}): waits until `count` (default 1)
-- of the futures are done (failed ones count) or `timeout` seconds pass;
-- returns the list of done futures and the list of the others, each in the
-- order of `list` (as ray.wait does). Never raises a future's error.
function futures.wait_any(list, opts)
  local n = check_list(list, "wait_any")
  if opts ~= nil and type(opts) ~= "table" then
    error("wait_any: options must be a table, got " .. type(opts), 2)
  end
  opts = opts or {}
  local count = opts.count or 1
  if math.type(count) ~= "integer" or count < 0 or count > n then
    error(("wait_any: count must be an integer from 0 to %d (the list's " ..
      "length), got %s"):format(n, tostring(count)), 2)
  end
  local timeout = opts.timeout
  if timeout ~= nil and (type(timeout) ~= "number" or timeout ~= timeout or
      timeout < 0) then
    error(("wait_any: timeout must be a number of seconds >= 0, got %s")
      :format(tostring(timeout)), 2)
  end
  -- The loop's timers go up to 1e9 s (31 years): a longer timeout (such as
  -- math.huge) is no timeout.
  if timeout ~= nil and timeout >= MAX_TIMER then timeout = nil end
  local function split()
    local done, not_done = {}, {}
    for i = 1, n do
      local f = list[i]
      if f:done() then done[#done + 1] = f else not_done[#not_done + 1] = f end
    end
    return done, not_done
  end
  local done_count = 0
  for i = 1, n do
    if list[i]:done() then done_count = done_count + 1 end
  end
  if done_count >= count or timeout == 0 then return split() end
  local enough = core.Future()
  local function one_done()
    done_count = done_count + 1
    if done_count >= count and not enough:done() then enough:set_result(true) end
  end
  for i = 1, n do
    if not list[i]:done() then list[i]:add_done_callback(one_done) end
  end
  local timer
  if timeout ~= nil then
    timer = core.timer(timeout)
    timer:add_done_callback(function()
      if not enough:done() then enough:set_result(false) end
    end)
  end
  enough:wait()
  -- Completing the timer's future cancels it.
  if timer ~= nil and not timer:done() then timer:set_result(nil) end
  return split()
end

return futures
