-- Optimizer steps on the device against the CPU: SGD with momentum (and
-- weight decay, Nesterov) and Adam, a few steps each from the same
-- parameters and gradients, with their state on the parameters' device;
-- gradient clipping.
local ember = require "ember"
local T = ember.tensor
local optim = ember.optim

local checks = {}
local function check(name, fn) checks[#checks + 1] = { name, fn } end

-- Runs `steps` steps of make_opt on a least-squares problem from the same
-- start on the CPU and on the device; after each step the parameters must
-- agree. Returns the device's optimizer and parameters.
local function race(g, make_opt, steps, dtype)
  local o = { dtype = dtype or "float64" }
  local w0, b0 = T.randn(5, 3, o), T.randn(3, o)
  local x, y = T.randn(8, 5, o), T.randn(8, 3, o)
  local function setup(device)
    -- Copies: each run updates its own leaves.
    local w = w0:clone():to(device):requires_grad_(true)
    local b = b0:clone():to(device):requires_grad_(true)
    return { w, b }, x:to(device), y:to(device)
  end
  local pc, xc, yc = setup("cpu")
  local pd, xd, yd = setup(g.device)
  local oc, od = make_opt(pc), make_opt(pd)
  for step = 1, steps do
    for _, run in ipairs({ { oc, pc, xc, yc }, { od, pd, xd, yd } }) do
      local opt, p, inp, target = run[1], run[2], run[3], run[4]
      opt:zero_grad()
      local diff = T.addmm(p[2], inp, p[1]) - target
      ;(diff * diff):mean():backward()
      opt:step()
    end
    for i, name in ipairs({ "weight", "bias" }) do
      g:close(pd[i], pc[i], { what = ("%s after step %d"):format(name, step),
        loose = true, device = g.device_name })
      g:is(pd[i].is_leaf and pd[i].requires_grad,
        "%s is no longer a leaf that requires grad", name)
    end
  end
  return od, pd
end

-- Every tensor in the optimizer's state is on the device.
local function state_on_device(g, opt, params)
  for _, p in ipairs(params) do
    local state = opt.state[p]
    g:is(state ~= nil, "no optimizer state for a parameter")
    for k, v in pairs(state) do
      if T.is_tensor(v) then
        g:eq(v:device(), g.device_name, "optimizer state " .. k .. " device")
      end
    end
  end
end

check("SGD with momentum", function(g)
  local opt, params = race(g, function(p)
    return optim.SGD(p, { lr = 0.1, momentum = 0.9 })
  end, 3)
  state_on_device(g, opt, params)
  race(g, function(p)
    return optim.SGD(p, { lr = 0.05, momentum = 0.9, nesterov = true,
      weight_decay = 0.01 })
  end, 3)
  race(g, function(p) return optim.SGD(p, { lr = 0.1 }) end, 2, "float32")
end)

check("Adam", function(g)
  local opt, params = race(g, function(p)
    return optim.Adam(p, { lr = 1e-2 })
  end, 3)
  state_on_device(g, opt, params)
  race(g, function(p)
    return optim.Adam(p, { lr = 1e-2, weight_decay = 0.1, amsgrad = true })
  end, 3)
  race(g, function(p) return optim.Adam(p, { lr = 1e-3 }) end, 2, "float32")
end)

check("zero_grad in place and clip_grad_norm_", function(g)
  g:same(function(w)
    w = w:clone():requires_grad_(true)
    ;(w * w):sum():backward()
    local opt = optim.SGD({ w }, { lr = 0.1 })
    local norm = ember.nn.utils.clip_grad_norm_({ w }, 0.5)
    local clipped = w.grad:clone()
    opt:step()
    opt:zero_grad(false)
    return norm, clipped, w:detach(), w.grad
  end, { T.randn(4, 3, { dtype = "float64" }) },
    { what = "clip, step, zero_grad(false)", loose = true })
end)

return checks
