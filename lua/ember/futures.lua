-- Futures (torch.futures for Lua): the Future type lives in C (ember.core);
-- this module adds the functions over lists of futures.
local core = require "ember.core"

local futures = {}

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

return futures
