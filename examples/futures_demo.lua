-- A small tour of ember's futures, run by scripts/demo until the batch
-- CartPole example exists: an "agent" asks several "observers" (light tasks
-- that take a while to answer), chains work on their replies with next(),
-- gathers them with wait_all, and handles an observer that fails.
--
--   ember run examples/futures_demo.lua [OBSERVERS]
local ember = require "ember"
local futures = ember.futures

local observers = tonumber(arg[1]) or 4

-- An observer takes 10-40 ms to "step its environment" and returns a reward.
local function observe(id)
  ember.sleep(0.01 * (1 + (id * 7) % 4))
  return { id = id, reward = id * 1.5 }
end

print(("agent: asking %d observers"):format(observers))
local started = ember.clock()
local replies = {}
for id = 1, observers do
  replies[id] = ember.spawn(observe, id):next(function(f)
    local reply = f:value()
    print(("  observer %d answered, reward %.1f"):format(reply.id, reply.reward))
    return reply.reward
  end)
end

local rewards = futures.wait_all(replies)
local total = 0
for i = 1, rewards.n do total = total + rewards[i] end
print(("agent: total reward %.1f from %d observers"):format(total, rewards.n))

-- A failing observer: its error, with the remote-looking traceback, reaches
-- whoever waits on it.
local broken = ember.spawn(function()
  ember.sleep(0.005)
  error("observer 99: environment crashed")
end)
local ok, err = pcall(broken.wait, broken)
print("agent: a failing observer reports: " .. tostring(err):match("[^\n]+"))
assert(not ok)

-- collect_all waits for everything, failures included.
local all = futures.collect_all({ ember.after(0.001, function() return "ok" end), broken })
local states = {}
for _, f in ipairs(all:wait()) do states[#states + 1] = f:failed() and "failed" or "done" end
print("agent: collect_all sees " .. table.concat(states, ", "))
print(("agent: finished in %.0f ms"):format((ember.clock() - started) * 1000))
