-- GPU benchmark: `ember run scripts/bench/gpu.lua [--quick] [--size N]
-- [--repeats R]`. Prints one JSON object per line:
--   gpu.sgemm    TFLOP/s of one float32 N x N x N matrix product on the CUDA
--                device (2 N^3 / time; the median of R timed calls after two
--                warm-up calls, each call ended by T.cuda.synchronize()).
--                N is 4096 unless --size says otherwise (1024 with --quick;
--                on the simulated device 1024, or 256 with --quick, since its
--                kernels are the CPU's). scripts/bench/gpu_torch.py measures
--                the same product with PyTorch.
--   gpu.policy   the tutorial's Policy (4 -> 128 -> 2, eval mode, no_grad)
--                for 1, 10 and 100 observers: microseconds of one batched
--                call on an (N, 4) input against N calls on (1, 4) inputs,
--                each call synchronised as an agent answering it must; on
--                the CUDA device and on the CPU. calls_per_batch says how
--                many single calls one batched call costs (the tutorial's
--                claim: about one).
-- Without a CUDA device it prints {"bench":"gpu","skipped":"<reason>"} and
-- exits 0. On EMBER_CUDA_SIM's simulated devices it runs, and every line
-- says "simulated":true: the numbers then measure nothing.
local ember = require "ember"
local T = ember.tensor

local here = (arg and arg[0] or ""):match("^(.*/)") or "scripts/bench/"
local common = dofile(here .. "common.lua")
local Policy = dofile(here .. "../../examples/cartpole_policy.lua")

-- Reads the command line (ember.options: --help and clear errors).
local function parse_args(argv)
  return require("ember.options").parse(argv, {
    usage = "ember run scripts/bench/gpu.lua [--quick] [--size N] [--repeats R]",
    about = "sgemm TFLOP/s and the tutorial Policy batched vs single calls.",
    { "quick", false, "smaller and fewer: a smoke test of the benchmark" },
    { "size", nil, "the sgemm's N (default 4096; 1024 with --quick; 1024 or "
      .. "256 on the simulated device)", kind = "integer", min = 1 },
    { "repeats", nil, "timed sgemm calls (default 10, 3 with --quick)",
      kind = "integer", min = 1 },
  })
end

-- Why there is no CUDA device, or nil when there is one.
local function unavailable()
  local cuda = T.cuda
  if type(cuda) ~= "table" or type(cuda.is_available) ~= "function" then
    return "no CUDA device: this build's ember.tensor has no cuda module"
  end
  if cuda.is_available() then return nil end
  local why = cuda.unavailable_reason and cuda.unavailable_reason()
  if why == nil then
    local _, core_why = require("ember.core").cuda_device_count()
    why = core_why and "this build has no CUDA backend (" .. core_why .. ")"
  end
  if why == nil then return "no CUDA device found" end
  why = tostring(why)
  if why:lower():match("^no cuda device") then return why end
  return "no CUDA device: " .. why
end

local now = ember.clock

local function median(list)
  local s = { table.unpack(list) }
  table.sort(s)
  local n = #s
  if n % 2 == 1 then return s[(n + 1) // 2] end
  return (s[n // 2] + s[n // 2 + 1]) / 2
end

local function minimum(list)
  local m = math.huge
  for _, v in ipairs(list) do m = math.min(m, v) end
  return m
end

local function sync(device)
  if device ~= "cpu" then T.cuda.synchronize() end
end

local function sgemm(n, repeats, info)
  -- Operands made on the CPU and copied: how they are made does not matter
  -- to the product's time.
  T.manual_seed(1)
  local a = T.randn(n, n):cuda()
  local b = T.randn(n, n):cuda()
  for _ = 1, 2 do
    T.mm(a, b)
    sync("cuda")
  end
  local times = {}
  for i = 1, repeats do
    local start = now()
    T.mm(a, b)
    sync("cuda")
    times[i] = now() - start
  end
  local t = median(times)
  common.emit("gpu.sgemm", {
    m = n, k = n, n = n, dtype = "float32", repeats = repeats,
    device = "cuda:0", device_name = info.name, simulated = info.simulated,
    tflops = 2.0 * n * n * n / t / 1e12,
    ms_median = t * 1e3, ms_min = minimum(times) * 1e3,
  })
end

-- Median microseconds of fn() over `budget` seconds (at least `least`
-- timed calls), after a tenth of that spent warming up.
local function time_us(fn, budget, least)
  local warm = now()
  repeat fn() until now() - warm >= budget / 10
  local times, start = {}, now()
  repeat
    local t0 = now()
    fn()
    times[#times + 1] = (now() - t0) * 1e6
  until #times >= least and now() - start >= budget
  return median(times), #times
end

local function policy(device, observers, budget, info)
  T.manual_seed(1)
  local model = Policy()
  model:eval()
  if device ~= "cpu" then model:to(device) end
  local batch = T.randn(observers, 4):to(device)
  local singles = {}
  for i = 1, observers do singles[i] = batch:narrow(1, i, 1):contiguous() end
  local batched_us, batched_calls = time_us(function()
    T.no_grad(model, batch)
    sync(device)
  end, budget, 5)
  local singles_us, singles_calls = time_us(function()
    for i = 1, observers do
      T.no_grad(model, singles[i])
      sync(device)
    end
  end, budget, 5)
  local one_us = singles_us / observers
  common.emit("gpu.policy", {
    device = device == "cpu" and "cpu" or "cuda:0",
    device_name = device == "cpu" and "cpu" or info.name,
    simulated = device ~= "cpu" and info.simulated or false,
    observers = observers,
    batched_us = batched_us, singles_us = singles_us, single_call_us = one_us,
    singles_over_batched = singles_us / batched_us,
    calls_per_batch = batched_us / one_us,
    timed_batched = batched_calls, timed_singles = singles_calls,
  })
end

local function main(argv)
  local opts = parse_args(argv)
  local why = unavailable()
  if why ~= nil then
    common.emit("gpu", { skipped = why })
    return
  end
  local info = { name = T.cuda.get_device_name(0),
    simulated = T.cuda.is_simulated() }
  local size = opts.size
  if size == nil then
    if info.simulated then size = opts.quick and 256 or 1024
    else size = opts.quick and 1024 or 4096 end
  end
  local repeats = opts.repeats or (opts.quick and 3 or 10)
  local budget = opts.quick and 0.1 or 1.0
  sgemm(size, repeats, info)
  for _, device in ipairs({ "cuda", "cpu" }) do
    for _, n in ipairs({ 1, 10, 100 }) do policy(device, n, budget, info) end
  end
end

main(arg or {})
