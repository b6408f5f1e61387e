-- The bundled examples run to their stated end.
local example = require "spec.support.example"
local EMBER, sh = example.EMBER, example.sh

describe("examples/reinforce_local.lua", function()
  it("solves CartPole with a fixed seed within a cap on episodes", function()
    local out, status = sh(EMBER .. " run examples/reinforce_local.lua"
      .. " --seed 2 --max-episodes 1500 --log-interval 100", 600)
    assert.equal(0, status, out)
    local running, episode = out:match(
      "Solved! Running reward is now ([%d.]+) .- episode (%d+)")
    assert.is_not_nil(running, out)
    assert.is_true(tonumber(running) > 475)
    assert.is_true(tonumber(episode) <= 1500)
  end)

  it("stops with status 1 when the cap comes first", function()
    local out, status = sh(EMBER .. " run examples/reinforce_local.lua"
      .. " --seed 2 --max-episodes 3", 60)
    assert.equal(1, status, out)
    assert.matches("Not solved in 3 episodes", out)
  end)

  it("rejects unknown options with its usage", function()
    local out, status = sh(EMBER .. " run examples/reinforce_local.lua --bogus 1", 60)
    assert.equal(2, status)
    assert.matches("unknown option '%-%-bogus'", out)
    assert.matches("usage:", out)
  end)
end)
