-- Futures benchmark: `ember run scripts/bench/futures.lua [N]`.
-- Prints one JSON object per line:
--   next_chain      callbacks/s along a chain of N next() links
--   fan_out         callbacks/s of N add_done_callback on one future
--   task_wakeups    tasks woken from wait() per second
--   pending_memory  bytes per pending future (Lua heap + C heap, from RSS)
local ember = require "ember"
local Future = ember.futures.Future

local N = tonumber(arg and arg[1]) or 1000000

local now = ember.clock

local common = dofile((arg and arg[0] or ""):match("^(.*/)") and
  arg[0]:match("^(.*/)") .. "common.lua" or "scripts/bench/common.lua")
local rss_bytes = common.rss_bytes

local function emit(name, fields)
  common.emit("futures." .. name, fields)
end

local function next_chain(n)
  local head = Future()
  local tail = head
  local build_start = now()
  for _ = 1, n do tail = tail:next(function(p) return p:value() + 1 end) end
  local run_start = now()
  head:set_result(0)
  assert(tail:wait() == n)
  local finish = now()
  emit("next_chain", { n = n, build_s = run_start - build_start,
    run_s = finish - run_start,
    callbacks_per_s = n / (finish - run_start) })
end

local function fan_out(n)
  local f = Future()
  local count = 0
  local function bump() count = count + 1 end
  local start = now()
  for _ = 1, n do f:add_done_callback(bump) end
  f:set_result(true)
  local finish = now()
  assert(count == n)
  emit("fan_out", { n = n, seconds = finish - start,
    callbacks_per_s = n / (finish - start) })
end

-- Task A posts a reply future into B's mailbox; B wakes and answers it.
-- Each round wakes B once from its wait().
local function task_wakeups(rounds)
  local mailbox = Future()
  local start = now()
  local b = ember.spawn(function()
    for i = 1, rounds do
      local reply = mailbox:wait()
      mailbox = Future()
      reply:set_result(i)
    end
  end)
  local a = ember.spawn(function()
    for i = 1, rounds do
      local reply = Future()
      mailbox:set_result(reply)
      assert(reply:wait() == i)
    end
  end)
  ember.futures.wait_all({ a, b })
  local finish = now()
  emit("task_wakeups", { rounds = rounds, seconds = finish - start,
    wakeups_per_s = rounds / (finish - start) })
end

local function pending_memory(n)
  collectgarbage()
  collectgarbage()
  local lua_before, rss_before = collectgarbage("count") * 1024, rss_bytes()
  local held = {}
  for i = 1, n do held[i] = Future() end
  collectgarbage()
  local lua_after, rss_after = collectgarbage("count") * 1024, rss_bytes()
  -- The table that holds them is the benchmark's, not the futures' cost.
  local table_bytes = 16 * n
  emit("pending_memory", { n = n,
    bytes_per_future = (rss_after - rss_before - table_bytes) / n,
    lua_heap_bytes_per_future = (lua_after - lua_before - table_bytes) / n })
  held = nil
end

-- Memory first, while the heap is fresh and RSS deltas are clean.
pending_memory(math.min(N, 200000))
next_chain(N)
fan_out(N)
task_wakeups(math.min(N, 200000))
