-- The device side of ember.tensor's API: how a machine without a (usable)
-- GPU answers, and, on simulated CUDA devices (EMBER_CUDA_SIM), modules and
-- optimizers moved to a device.
local T = require "ember.tensor"
local nn = require "ember.nn"
local example = require "spec.support.example"

local simulated = os.getenv("EMBER_CUDA_SIM")

describe("devices", function()
  it("are named cpu and cuda:N", function()
    assert.equal("cpu", T.device("cpu"))
    assert.equal("cpu", T.ones(2):device())
    assert.has_error(function() T.device("gpu") end,
      "device: unknown device 'gpu' (expected 'cpu', 'cuda' or 'cuda:N')")
    assert.has_error(function() T.zeros(2, { device = "cuda:x" }) end)
    assert.has_error(function() T.zeros(2, { device = true }) end,
      "zeros: device must be a string such as 'cpu' or 'cuda:0', got boolean")
  end)

  it("say why there is no CUDA device on a machine without one", function()
    if simulated ~= nil or T.cuda.is_available() then
      pending("this machine has CUDA devices")
      return
    end
    assert.is_false(T.cuda.is_available())
    assert.equal(0, T.cuda.device_count())
    local reason = T.cuda.unavailable_reason()
    assert.truthy(reason:match("no CUDA backend") or reason:match("no CUDA device"))
    local ok, err = pcall(function() return T.ones(2):to("cuda") end)
    assert.is_false(ok)
    assert.matches("device 'cuda:0' is not available: " .. reason:gsub("%p", "%%%0"),
      err)
    ok, err = pcall(function() return T.ones(2):cuda() end)
    assert.is_false(ok)
    assert.matches("not available", err)
  end)

  it("move modules and optimizers with their tensors (simulated)", function()
    local script = os.tmpname() .. ".lua"
    local f = assert(io.open(script, "w"))
    f:write([==[
local ember = require "ember"
local T, nn, optim = ember.tensor, ember.nn, ember.optim
T.manual_seed(3)
local model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
local cpu_model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
cpu_model:load_state_dict(model:state_dict())
model:cuda()
print("param", model:parameters()[1]:device())
local x = T.randn(5, 4)
local opt = optim.Adam(model:parameters(), { lr = 0.1 })
local cpu_opt = optim.Adam(cpu_model:parameters(), { lr = 0.1 })
for _ = 1, 3 do
  opt:zero_grad(); cpu_opt:zero_grad()
  model(x:cuda()):pow(2):sum():backward()
  cpu_model(x):pow(2):sum():backward()
  opt:step(); cpu_opt:step()
end
local a, b = model:parameters()[3]:cpu(), cpu_model:parameters()[3]
print("same", T.allclose(a, b, 1e-5, 1e-6))
print("state", opt.state[model:parameters()[1]].exp_avg:device())
print("shown", tostring(T.ones(2):cuda()):match("device='cuda:0'") ~= nil)
print("back", model:cpu():parameters()[1]:device())
-- A weight two modules share stays one tensor on the device.
local emb, lin = nn.Embedding(5, 3), nn.Linear(3, 5, { bias = false })
lin.weight = emb.weight
local tied = nn.Sequential(emb, lin):cuda()
print("tied", rawequal(emb.weight, lin.weight), emb.weight:device())
print("tensor_to_cpu", T.tensor(T.ones(2):cuda(), { device = "cpu" }):device())
]==])
    f:close()
    local out, status = example.sh(("env EMBER_CUDA_SIM=1 %s run %s"):format(
      example.EMBER, script), 60)
    os.remove(script)
    assert.equal(0, status, out)
    assert.matches("param\tcuda:0", out)
    assert.matches("same\ttrue", out)
    assert.matches("state\tcuda:0", out)
    assert.matches("shown\ttrue", out)
    assert.matches("back\tcpu", out)
    assert.matches("tied\ttrue\tcuda:0", out)
    assert.matches("tensor_to_cpu\tcpu", out)
  end)

  it("refuse a bad EMBER_CUDA_SIM", function()
    local script = os.tmpname() .. ".lua"
    local f = assert(io.open(script, "w"))
    f:write([[print(pcall(require("ember").tensor.zeros, 1, {device = "cuda"}))]])
    f:close()
    local out = example.sh(("env EMBER_CUDA_SIM=lots %s run %s"):format(example.EMBER,
      script), 30)
    os.remove(script)
    assert.matches("EMBER_CUDA_SIM must be a number of simulated devices from "
      .. "0 to 16, not 'lots'", out, 1, true)
  end)
end)
