-- examples/rpc/batch/parameter_server.lua: the batch-updating parameter
-- server runs its rounds, learns, and refuses a world it does not fit.
local example = require "spec.support.example"
local EMBER, sh = example.EMBER, example.sh
local SCRIPT = "examples/rpc/batch/parameter_server.lua"

local launch = example.launcher(SCRIPT)

-- The losses trainer `name` printed, by iteration.
local function losses_of(out, name, iters)
  local losses = {}
  for i, loss in out:gmatch(name .. ": iteration (%d+)/" .. iters ..
      "  loss ([%d.e+-]+)") do
    losses[tonumber(i)] = tonumber(loss)
  end
  return losses
end

describe("examples/rpc/batch/parameter_server.lua", function()
  it("runs every trainer's iterations and times the whole", function()
    local out, status = launch(3, "--trainers 2 --iters 3 --hidden 32")
    assert.equal(0, status, out)
    for _, name in ipairs({ "trainer1", "trainer2" }) do
      for i = 1, 3 do
        assert.matches(name .. ": iteration " .. i ..
          "/3  loss [%d.]+  %([%d.]+ s%)", out, 1, false)
      end
      local losses = losses_of(out, name, 3)
      assert.equal(3, #losses, out)
      for _, loss in ipairs(losses) do
        assert.is_true(loss > 0 and loss < 1, out)
      end
    end
    assert.is_nil(out:match("trainer3"), out)
    local seconds = out:match("%[rank 0%] 2 trainers x 3 iterations: ([%d.]+) s")
    assert.is_not_nil(seconds, out)
    assert.is_true(tonumber(seconds) > 0, out)
    assert.is_nil(out:match("leak"), out)
  end)

  it("learns: on a fixed batch the loss falls, as it does with --copy",
    function()
      local args = "--iters 4 --hidden 32 --fixed-batch --seed 7"
      local out, status = launch(3, args)
      assert.equal(0, status, out)
      local copied, copy_status = launch(3, args .. " --copy")
      assert.equal(0, copy_status, copied)
      for _, name in ipairs({ "trainer1", "trainer2" }) do
        local losses = losses_of(out, name, 4)
        assert.equal(4, #losses, out)
        for i = 2, 4 do
          assert.is_true(losses[i] < losses[i - 1],
            ("%s: loss %d (%g) is not below loss %d (%g)\n%s"):format(name, i,
              losses[i], i - 1, losses[i - 1], out))
        end
        -- The same seed gives the same model and batches: taking the
        -- received tensors and copying them in train alike.
        local other = losses_of(copied, name, 4)
        assert.equal(4, #other, copied)
        for i = 1, 4 do
          assert.is_true(math.abs(other[i] - losses[i]) < 1e-5,
            ("%s iteration %d: %g vs %g with --copy"):format(name, i,
              losses[i], other[i]))
        end
      end
    end)

  it("a batch drawn afresh each iteration gives other losses", function()
    local out, status = launch(2, "--iters 3 --hidden 32 --seed 7")
    assert.equal(0, status, out)
    local fixed = launch(2, "--iters 3 --hidden 32 --seed 7 --fixed-batch")
    local a, b = losses_of(out, "trainer1", 3), losses_of(fixed, "trainer1", 3)
    assert.equal(3, #a, out)
    assert.equal(3, #b, fixed)
    assert.near(a[1], b[1], 1e-6)
    assert.is_true(math.abs(a[3] - b[3]) > 1e-6, out .. fixed)
  end)

  it("says so when --trainers does not match the world size", function()
    local out, status = launch(3, "--trainers 4 --hidden 32", 60)
    assert.equal(2, status, out)
    assert.matches("%-%-trainers 4 needs a world of 5 workers", out)
    assert.matches("ember launch %-n 5", out)
  end)

  it("needs ember launch", function()
    local out, status = sh(EMBER .. " run " .. SCRIPT, 60)
    assert.equal(2, status, out)
    assert.matches("ember launch %-n 5 examples/rpc/batch/parameter_server.lua",
      out)
  end)

  it("has --help and rejects unknown choices", function()
    local out, status = sh(EMBER .. " run " .. SCRIPT .. " --help", 60)
    assert.equal(0, status, out)
    assert.matches("usage: ember launch %-n N", out)
    for _, option in ipairs({ "--trainers", "--iters", "--batch-size",
      "--hidden", "--lr", "--momentum", "--seed", "--model {mlp}",
      "--fixed-batch" }) do
      assert.matches(option, out, 1, true)
    end
    out, status = sh(EMBER .. " run " .. SCRIPT .. " --model resnet50", 60)
    assert.equal(2, status, out)
    assert.matches("option %-%-model needs one of mlp", out)
  end)
end)
