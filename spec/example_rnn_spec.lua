-- examples/rpc/rnn.lua: the RNN split across a parameter server and a
-- trainer ("Getting Started", part 2), trained with distributed autograd and
-- a DistributedOptimizer, run as its users would run it, through `ember
-- launch`. Every command is bounded by `timeout`.
local example = require "spec.support.example"
local EMBER, sh = example.EMBER, example.sh
local SCRIPT = "examples/rpc/rnn.lua"

local launch = example.launcher(SCRIPT)

-- The mean losses the trainer printed, by epoch, as numbers and as printed.
local function losses_of(out, epochs)
  local losses, texts = {}, {}
  for epoch, loss in out:gmatch("%[rank 1%] epoch (%d+)/" .. epochs ..
      "  loss ([%d.]+)  %([%d.]+ s%)\n") do
    losses[tonumber(epoch)] = tonumber(loss)
    texts[tonumber(epoch)] = loss
  end
  return losses, texts
end

-- The summary line's first and last losses.
local function summary_of(out)
  local first, last = out:match("%[rank 1%] loss ([%d.]+) %(epoch 1%) %-> " ..
    "([%d.]+) %(epoch %d+%) in [%d.]+ s; a uniform guess scores ln %d+ = " ..
    "[%d.]+\n")
  return tonumber(first), tonumber(last)
end

describe("examples/rpc/rnn.lua", function()
  it("prints every epoch and a summary (2 workers)", function()
    local out, status = launch(2, "--epochs 3 --iters 4", 60)
    assert.equal(0, status, out)
    local losses = losses_of(out, 3)
    assert.equal(3, #losses, out)
    for _, loss in ipairs(losses) do
      assert.is_true(loss > 0 and loss < 10, out)
    end
    local first, last = summary_of(out)
    assert.is_not_nil(first, out)
    assert.near(losses[1], first, 1e-4)
    assert.near(losses[3], last, 1e-4)
    -- The PS only serves: it prints nothing but ember's line on the listen
    -- rule.
    assert.is_nil(out:match("%[rank 0%] [^e]"), out)
    assert.matches("[rank 0] ember: no EMBER_SECRET", out, 1, true)
    assert.is_nil(out:match("leak"), out)
  end)

  it("learns with its defaults: the loss falls from about ln 10", function()
    local out, status = launch(2, "", 120)
    assert.equal(0, status, out)
    local losses = losses_of(out, 10)
    assert.equal(10, #losses, out)
    assert.near(math.log(10), losses[1], 0.1)
    assert.is_true(losses[10] < 1, out)
    assert.is_true(losses[10] < losses[5] and losses[5] < losses[1], out)
  end)

  it("learns fast with a larger learning rate", function()
    local out, status = launch(2, "--epochs 3 --iters 40 --lr 1", 60)
    assert.equal(0, status, out)
    local losses = losses_of(out, 3)
    assert.equal(3, #losses, out)
    assert.is_true(losses[3] < 0.5 * losses[1], out)
  end)

  it("gives the same losses for the same seed, others for another",
    function()
      local args = "--epochs 2 --iters 10 --lr 0.5 --seed "
      local a, status_a = launch(2, args .. "3", 60)
      local b, status_b = launch(2, args .. "3", 60)
      local c, status_c = launch(2, args .. "4", 60)
      assert.equal(0, status_a, a)
      assert.equal(0, status_b, b)
      assert.equal(0, status_c, c)
      local _, la = losses_of(a, 2)
      local _, lb = losses_of(b, 2)
      local _, lc = losses_of(c, 2)
      assert.equal(2, #la, a)
      assert.same(la, lb)
      assert.are_not.same(la, lc)
    end)

  it("has --help", function()
    local out, status = sh(EMBER .. " run " .. SCRIPT .. " --help", 30)
    assert.equal(0, status, out)
    assert.matches("usage: ember launch %-n 2 examples/rpc/rnn.lua", out)
    for _, option in ipairs({ "--epochs", "--iters", "--lr", "--seed",
      "--device", "--dropout", "--ntoken", "--ninp", "--nhid", "--nlayers",
      "--seq-len", "--batch" }) do
      assert.matches(option .. " ", out, 1, true)
    end
  end)

  it("needs a world of exactly 2 workers, started by ember launch",
    function()
      local out, status = launch(3, "", 30)
      assert.equal(2, status, out)
      assert.matches("needs a world of 2 workers %(the PS and the trainer%), "
        .. "but it has 3: use ember launch %-n 2", out)
      out, status = sh(EMBER .. " run " .. SCRIPT, 30)
      assert.equal(2, status, out)
      assert.matches("ember launch %-n 2 examples/rpc/rnn.lua", out)
    end)

  it("trains the embedding on a (simulated) CUDA device with --device cuda",
    function()
      -- EMBER_CUDA_SIM=1: a device whose memory the host cannot touch
      -- outside its kernels, so every move the example makes is checked.
      local out, status = sh(("env EMBER_CUDA_SIM=1 %s launch -n 2 %s " ..
        "--device cuda --epochs 3 --iters 40 --lr 1"):format(EMBER, SCRIPT), 60)
      assert.equal(0, status, out)
      local losses = losses_of(out, 3)
      assert.equal(3, #losses, out)
      assert.is_true(losses[3] < 0.5 * losses[1], out)
    end)

  it("puts the embedding on --device cuda, or says there is no GPU",
    function()
      local ember = require "ember"
      if ember.cuda.is_available() then
        local out, status = launch(2, "--device cuda --epochs 2 --iters 5",
          60)
        assert.equal(0, status, out)
        assert.equal(2, #losses_of(out, 2), out)
        return
      end
      local out, status = launch(2, "--device cuda --epochs 1 --iters 1", 30)
      assert.equal(2, status, out)
      assert.matches("--device cuda: device 'cuda:0' is not available", out,
        1, true)
    end)
end)
