-- Tensor benchmark: `ember run scripts/bench/tensor.lua [seconds per case]`.
-- Prints one JSON object per line:
--   sgemm        GFLOP/s of float32 matrix products through ember.tensor
--                (OpenBLAS, one thread unless EMBER_NUM_THREADS says more):
--                512x512x512, and 20x12288x512 (the parameter server's first
--                layer: a batch of 20 images times a 12288x512 weight)
--   policy       microseconds per step of the REINFORCE tutorial's Policy
--                (4 -> 128, dropout 0.6, ReLU, -> 2, softmax): forward,
--                Categorical sample, log_prob, backward, at batch 1 and 10
-- FIGURES.md has PyTorch 1.13's numbers for the same work on this machine.
local ember = require "ember"
local T = ember.tensor
local Categorical = ember.distributions.Categorical

local here = (arg and arg[0] or ""):match("^(.*/)") or "scripts/bench/"
local common = dofile(here .. "common.lua")
local Policy = dofile(here .. "../../examples/cartpole_policy.lua")
local budget = tonumber(arg and arg[1]) or 1.0
local now = ember.clock

-- Runs fn until `budget` seconds have passed (after one warm-up call);
-- returns calls and seconds.
local function time_it(fn)
  fn()
  local calls, start = 0, now()
  local elapsed
  repeat
    fn()
    calls = calls + 1
    elapsed = now() - start
  until elapsed >= budget
  return calls, elapsed
end

-- From ../shared/reference/FIGURES.md (same machine kind, one thread):
-- OpenBLAS sgemm called directly, and PyTorch 1.13's Policy step.
local OPENBLAS_GFLOPS = { ["512x512x512"] = 73.8, ["20x12288x512"] = 27.3 }
local PYTORCH_POLICY_US = { [1] = 530, [10] = 548 }

local function sgemm(m, k, n)
  T.manual_seed(1)
  local a, b = T.randn(m, k), T.randn(k, n)
  local calls, seconds = time_it(function() return T.mm(a, b) end)
  local gflops = 2.0 * m * k * n * calls / seconds / 1e9
  local reference = OPENBLAS_GFLOPS[("%dx%dx%d"):format(m, k, n)]
  common.emit("tensor.sgemm", {
    m = m, k = k, n = n, threads = T.get_num_threads(),
    gflops = gflops, ms_per_call = seconds / calls * 1e3,
    openblas_direct_gflops = reference, of_openblas_direct = gflops / reference,
  })
end

local function policy(batch)
  T.manual_seed(1)
  local model = Policy()
  local state = T.randn(batch, 4)
  local calls, seconds = time_it(function()
    local probs = model(state)
    local m = Categorical(probs)
    local action = m:sample()
    local loss = -m:log_prob(action):sum()
    loss:backward()
    model:zero_grad()
  end)
  local us = seconds / calls * 1e6
  common.emit("tensor.policy", {
    batch = batch, steps = calls, us_per_step = us,
    pytorch_us_per_step = PYTORCH_POLICY_US[batch],
    speedup_over_pytorch = PYTORCH_POLICY_US[batch] / us,
  })
end

sgemm(512, 512, 512)
sgemm(20, 12288, 512)
policy(1)
policy(10)
