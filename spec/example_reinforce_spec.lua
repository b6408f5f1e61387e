-- examples/rpc/reinforce.lua: REINFORCE CartPole with an agent and observers
-- talking through RRefs ("Getting Started", part 1), run as its users would
-- run it, through `ember launch`. Every command is bounded by `timeout`.
local example = require "spec.support.example"
local EMBER, sh = example.EMBER, example.sh
local SCRIPT = "examples/rpc/reinforce.lua"

local launch = example.launcher(SCRIPT)

-- The progress lines of `out`: { episode=, last=, average= } in order.
local function progress(out)
  local rows = {}
  local line = "Episode (%d+)\tLast reward: (%d+%.%d%d)\t"
    .. "Average reward: (%d+%.%d%d)\n"
  for episode, last, average in out:gmatch(line) do
    rows[#rows + 1] = { episode = tonumber(episode), last = tonumber(last),
      average = tonumber(average) }
  end
  return rows
end

describe("examples/rpc/reinforce.lua", function()
  it("prints the tutorial's progress lines and learns (2 workers)", function()
    local out, status = launch(2,
      "--seed 1 --max-episodes 60 --log-interval 10", 120)
    -- The cap comes first: rank 0 exits 1, so launch fails.
    assert.are_not.equal(0, status, out)
    assert.matches("This will run until reward threshold of 475%.0 is "
      .. "reached", out)
    assert.matches("Not solved in 60 episodes", out)
    assert.is_nil(out:match("rank 1 failed"), out)
    local rows = progress(out)
    assert.equal(6, #rows, out)
    for i, row in ipairs(rows) do
      assert.equal(10 * i, row.episode, out)
      assert.is_true(row.last >= 1 and row.last <= 500, out)
    end
    -- A random policy keeps games at ~22 steps, which holds the running
    -- reward (an average that starts at 0) under ~21 after 60 episodes;
    -- learning must take it well past that.
    local first, last = rows[1].average, rows[#rows].average
    assert.is_true(last > first + 15, out)
    assert.is_true(last > 35, out)
  end)

  it("runs with two observers (3 workers)", function()
    local out, status = launch(3, "--seed 1 --max-episodes 20 --log-interval 5",
      120)
    assert.are_not.equal(0, status, out)
    assert.matches("Not solved in 20 episodes", out)
    assert.is_nil(out:match("rank [12] failed"), out)
    local rows = progress(out)
    assert.equal(4, #rows, out)
    assert.equal(20, rows[4].episode, out)
    -- The running reward follows the worse observer's game, at least one
    -- step long.
    assert.is_true(rows[4].average > 1, out)
  end)

  it("solves CartPole with a fixed seed within a cap on episodes", function()
    -- Seed 1 solves at episode 270 (one observer makes the run
    -- deterministic), in about 10 s.
    local out, status = launch(2, "--seed 1 --max-episodes 1000 "
      .. "--log-interval 50", 300)
    assert.equal(0, status, out)
    local running, episode = out:match(
      "Solved! Running reward is now ([%d.]+)! %(episode (%d+), [%d.]+ s%)")
    assert.is_not_nil(running, out)
    assert.is_true(tonumber(running) > 475, out)
    assert.is_true(tonumber(episode) <= 1000, out)
    assert.is_nil(out:match("Not solved"), out)
  end)

  it("prints its usage for --help and exits 0", function()
    local out, status = sh(EMBER .. " run " .. SCRIPT .. " --help", 60)
    assert.equal(0, status, out)
    assert.matches("usage: ember launch %-n N examples/rpc/reinforce%.lua", out)
    for _, flag in ipairs({ "--gamma", "--seed", "--log-interval",
        "--max-episodes" }) do
      assert.matches(flag:gsub("%-", "%%-"), out)
    end
  end)

  it("rejects an unknown option with status 2", function()
    local out, status = launch(2, "--bogus 1", 60)
    assert.equal(2, status, out)
    assert.matches("unknown option '%-%-bogus'", out)
    assert.matches("usage:", out)
  end)

  it("says the world size is launch's -n", function()
    local out, status = launch(2, "--world-size 3", 60)
    assert.equal(2, status, out)
    assert.matches("launch's %-n", out)
  end)

  it("exits 2 with a message when not started by ember launch", function()
    local out, status = sh(EMBER .. " run " .. SCRIPT, 60)
    assert.equal(2, status, out)
    assert.matches("ember launch %-n 2 examples/rpc/reinforce%.lua", out)
  end)

  it("exits 2 with a message with only one worker", function()
    local out, status = launch(1, "", 60)
    assert.equal(2, status, out)
    assert.matches("at least one observer", out)
  end)
end)
