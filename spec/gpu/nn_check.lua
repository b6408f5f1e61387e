-- Models and autograd on the device against the CPU, each pair built from
-- one seed: the gradients of a small MLP, autograd through copies between
-- devices (ToCopy backward), LSTM and Embedding forward and backward, the
-- tutorial's Policy in eval mode, and a whole REINFORCE update.
local ember = require "ember"
local T = ember.tensor
local nn = ember.nn

local checks = {}
local function check(name, fn) checks[#checks + 1] = { name, fn } end

-- The same model twice from one seed: on the CPU, and moved to the device.
local function twin(g, make)
  T.manual_seed(42)
  local cpu = make()
  T.manual_seed(42)
  local dev = make()
  local moved = dev:to(g.device)
  g:is(moved == dev, "module:to(device) should return the module")
  return cpu, dev
end

local function params(m)
  local list = {}
  for name, p in m:named_parameters() do list[#list + 1] = { name, p } end
  return list
end

-- Every parameter of `dev` is on the device, a leaf that requires grad, and
-- (with grads = true) has the gradient of its CPU twin.
local function same_params(g, cpu, dev, opts)
  local a, b = params(cpu), params(dev)
  g:eq(#b, #a, "number of parameters")
  for i = 1, #a do
    local name, p, q = a[i][1], a[i][2], b[i][2]
    g:eq(b[i][1], name, "parameter name")
    g:eq(q:device(), opts.device or g.device_name, name .. " device")
    g:is(q.requires_grad and q.is_leaf, "%s: not a leaf that requires grad",
      name)
    local what = (opts.what or "") .. name
    if opts.grads then
      g:is(q.grad ~= nil, "%s: no gradient on the device", what)
      g:close(q.grad, p.grad, { what = what .. ".grad", loose = true,
        device = g.device_name })
    else
      g:close(q, p, { what = what, loose = opts.loose })
    end
  end
end

local function mlp(dtype)
  local o = { dtype = dtype }
  return nn.Sequential(nn.Linear(6, 16, o), nn.ReLU(), nn.Linear(16, 4, o),
    nn.LogSoftmax(2))
end

for _, dtype in ipairs({ "float64", "float32" }) do
  check("MLP (Linear-ReLU-Linear-log_softmax, CrossEntropyLoss) gradients, "
    .. dtype, function(g)
      local cpu, dev = twin(g, function() return mlp(dtype) end)
      same_params(g, cpu, dev, { what = "initial " })
      local x = T.randn(8, 6, { dtype = dtype, requires_grad = true })
      local xd = x:detach():to(g.device):requires_grad_(true)
      local target = T.tensor({ 1, 4, 2, 3, 3, 1, 2, 4 })
      local loss_fn = nn.CrossEntropyLoss()
      local lc = loss_fn(cpu(x), target)
      local ld = loss_fn(dev(xd), target:to(g.device))
      g:close(ld, lc, { what = "loss", loose = true, device = g.device_name })
      lc:backward()
      ld:backward()
      same_params(g, cpu, dev, { grads = true })
      g:close(xd.grad, x.grad, { what = "input grad", loose = true,
        device = g.device_name })
      -- A second backward accumulates into the same gradients.
      loss_fn(cpu(x), target):backward()
      loss_fn(dev(xd), target:to(g.device)):backward()
      same_params(g, cpu, dev, { grads = true, what = "accumulated " })
    end)
end

check("ToCopy backward: gradients go back to the leaf's device and dtype",
  function(g)
    local leaf = T.randn(3, 4, { requires_grad = true })
    local y = leaf:to(g.device)
    g:eq(y:device(), g.device_name, "leaf:to(device):device()")
    g:is(y.requires_grad, "the copy does not require grad")
    local z = (y:exp() * y):sum()
    z:backward()
    g:is(leaf.grad ~= nil, "the CPU leaf got no gradient")
    g:eq(leaf.grad:device(), "cpu", "leaf.grad:device()")
    local l = leaf:detach()
    g:close(leaf.grad, l:exp() * (l + 1), { what = "d/dx sum(x e^x)" })

    -- Device and dtype at once: the gradient comes back as float32.
    local leaf2 = T.randn(5, { requires_grad = true })
    local w = T.randn(5, { dtype = "float64" })
    local y2 = leaf2:to({ device = g.device, dtype = "float64" })
    g:eq(y2:dtype(), "float64", "to({device=, dtype=}) dtype")
    ;(y2 * w:to(g.device)):sum():backward()
    g:close(leaf2.grad, w:to("float32"), { what = "grad through a dtype change",
      device = "cpu" })

    -- A leaf on the device used on the CPU.
    local dleaf = T.randn(2, 3):to(g.device):requires_grad_(true)
    local c = dleaf:cpu()
    ;(c * c):sum():backward()
    g:close(dleaf.grad, dleaf:detach():cpu() * 2,
      { what = "device leaf used on the CPU", device = g.device_name })

    -- One leaf used on both devices: the gradients add up on its device.
    local both = T.randn(3, { requires_grad = true })
    ;(both * 2):sum():backward()
    ;(both:to(g.device) * 3):sum():backward()
    g:close(both.grad, T.full({ 3 }, 5.0),
      { what = "accumulated across devices", device = "cpu" })

    -- Through a view and a matmul on the device: out = a[:, 2:3] @ v.
    local a = T.randn(4, 3, { requires_grad = true })
    local v = T.randn(2, 1)
    local cols = a:to(g.device):t():narrow(1, 2, 2):t()
    cols:matmul(v:to(g.device)):sum():backward()
    local want = T.zeros(4, 3)
    want:narrow(2, 2, 2):copy_(v:t():expand(4, 2))
    g:close(a.grad, want, { what = "grad through views and matmul",
      device = "cpu", loose = true })
  end)

check("autograd of elementwise ops, reductions and softmax on the device",
  function(g)
    local x = T.randn(3, 5, { dtype = "float64" })
    local w = T.randn(3, 5, { dtype = "float64" })
    g:same(function(a, b)
      a = a:clone():requires_grad_(true)
      local y = (a:tanh() * b + a:sigmoid() - a:exp():sqrt() + a:abs()
        + a:clamp(-0.5, 0.5) + a:pow(2) / 3):log_softmax(2) * b
      local z = y:sum() + a:max(1):sum() + a:softmax(1):mean()
        + T.where(a:gt(0), a, a * 2):sum() + a:prod(2):sum()
      z:backward()
      return z:detach(), a.grad
    end, { x, w }, { what = "float64 composite", loose = true })
  end)

check("LSTM forward and backward", function(g)
  local make = function()
    return nn.LSTM(3, 5, { num_layers = 2, dtype = "float64" })
  end
  local cpu, dev = twin(g, make)
  same_params(g, cpu, dev, { what = "initial " })
  local x = T.randn(4, 2, 3, { dtype = "float64", requires_grad = true })
  local xd = x:detach():to(g.device):requires_grad_(true)
  local w = T.randn(4, 2, 5, { dtype = "float64" })
  local h0 = T.randn(2, 2, 5, { dtype = "float64" })
  local c0 = T.randn(2, 2, 5, { dtype = "float64" })
  local function loss(model, input, weight, hx)
    local out, state = model(input, hx)
    return (out * weight):sum() + state[1]:sum() + (state[2] * state[2]):sum(),
      out, state
  end
  local lc, oc, sc = loss(cpu, x, w, { h0, c0 })
  local ld, od, sd = loss(dev, xd, w:to(g.device),
    { h0:to(g.device), c0:to(g.device) })
  local o = { loose = true, device = g.device_name }
  o.what = "output"
  g:close(od, oc, o)
  o.what = "h_n"
  g:close(sd[1], sc[1], o)
  o.what = "c_n"
  g:close(sd[2], sc[2], o)
  lc:backward()
  ld:backward()
  same_params(g, cpu, dev, { grads = true })
  o.what = "input grad"
  g:close(xd.grad, x.grad, o)
  -- Without h0 and c0: the zero state must be made on the input's device.
  cpu:zero_grad()
  dev:zero_grad()
  local lc2, oc2 = loss(cpu, x:detach(), w)
  local ld2, od2 = loss(dev, xd:detach(), w:to(g.device))
  o.what = "output with zero initial state"
  g:close(od2, oc2, o)
  lc2:backward()
  ld2:backward()
  same_params(g, cpu, dev, { grads = true, what = "zero state " })
end)

check("LSTM batch_first, unbatched", function(g)
  local cpu, dev = twin(g, function()
    return nn.LSTM(2, 3, { batch_first = true, dtype = "float64" })
  end)
  g:same(function(x)
    local model = x:device() == "cpu" and cpu or dev
    local out, state = model(x)
    local out1, state1 = model(x:select(1, 1))
    return out, state, out1, state1
  end, { T.randn(2, 5, 2, { dtype = "float64" }) },
    { what = "batch_first and unbatched", loose = true })
end)

check("Embedding forward and backward", function(g)
  local cpu, dev = twin(g, function()
    return nn.Embedding(10, 4, { dtype = "float64" })
  end)
  local idx = T.tensor({ { 1, 3, 3 }, { 10, 1, 3 } })
  local w = T.randn(2, 3, 4, { dtype = "float64" })
  local oc = cpu(idx)
  local od = dev(idx:to(g.device))
  g:close(od, oc, { what = "lookup", device = g.device_name })
  ;(oc * w):sum():backward()
  ;(od * w:to(g.device)):sum():backward()
  same_params(g, cpu, dev, { grads = true })
  g:raises(function() return dev(T.tensor({ 11 }):to(g.device)) end,
    "out of range")
end)

check("the tutorial's Policy in eval mode: forward equals the CPU's",
  function(g)
    local Policy = dofile(g:path("examples/cartpole_policy.lua"))
    local cpu, dev = twin(g, Policy)
    cpu:eval()
    dev:eval()
    same_params(g, cpu, dev, { what = "initial " })
    for _, n in ipairs({ 1, 10, 100 }) do
      local x = T.randn(n, 4)
      local pc = T.no_grad(function() return cpu(x) end)
      local pd = T.no_grad(function() return dev(x:to(g.device)) end)
      g:close(pd, pc, { what = ("probs of %d states"):format(n), loose = true,
        device = g.device_name })
      g:close(pd:sum(2), T.ones(n), { what = "rows sum to 1", loose = true })
    end
    -- Moving back gives the same parameters, on the CPU.
    g:is(dev:cpu() == dev, "module:cpu() should return the module")
    same_params(g, cpu, dev, { what = "round trip ", device = "cpu" })
  end)

-- The agent's update of examples/rpc/batch/reinforce.lua with the policy on
-- the device: log-probabilities of chosen actions, returns, Adam.
check("a REINFORCE update on the device equals the CPU's", function(g)
  local Policy = dofile(g:path("examples/cartpole_policy.lua"))
  local Categorical = ember.distributions.Categorical
  local cpu, dev = twin(g, Policy)
  cpu:eval()
  dev:eval()
  local states = T.randn(6, 3, 4) -- 6 steps of 3 observers
  local actions = {}
  for s = 1, 6 do
    actions[s] = T.no_grad(function()
      return Categorical(cpu(states[s])):sample()
    end)
  end
  local returns = T.randn(18)
  local function update(model, device)
    local opt = ember.optim.Adam(model:parameters(), { lr = 1e-2 })
    local log_probs = {}
    for s = 1, 6 do
      local m = Categorical(model(states[s]:to(device)))
      local a = actions[s]:to(device)
      local sampled = m:sample()
      g:eq(sampled:device(), a:device(), "Categorical sample device")
      g:eq(sampled:dtype(), "int64", "Categorical sample dtype")
      log_probs[s] = m:log_prob(a)
    end
    local loss = -(T.cat(log_probs) * returns:to(device)):sum()
    opt:zero_grad()
    loss:backward()
    opt:step()
    return loss
  end
  local lc = update(cpu, "cpu")
  local ld = update(dev, g.device)
  g:close(ld, lc, { what = "loss", loose = true, device = g.device_name })
  same_params(g, cpu, dev, { grads = true })
  same_params(g, cpu, dev, { what = "after Adam: ", loose = true })
end)

return checks
