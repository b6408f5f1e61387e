-- ember.optim: SGD and Adam against updates computed by hand.
local ember = require "ember"
local T = require "ember.tensor"
local nn = require "ember.nn"
local optim = require "ember.optim"

local F64 = { dtype = "float64", requires_grad = true }

local function error_of(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  return tostring(err)
end

local function assert_values(expected, t, tol)
  local got = t:totable()
  assert.equal(#expected, #got)
  for i = 1, #expected do
    assert(math.abs(got[i] - expected[i]) <= (tol or 1e-12) *
      math.max(1, math.abs(expected[i])),
      ("element %d: expected %.15g, got %.15g"):format(i, expected[i], got[i]))
  end
end

-- Runs `steps` steps of opt on p with the given per-step gradients.
local function run(opt, p, grads)
  for _, g in ipairs(grads) do
    p.grad = T.tensor(g, { dtype = "float64" })
    opt:step()
  end
end

local GRADS = { { 0.5, -1.0, 2.0 }, { 0.25, 0.5, -1.5 }, { -0.75, 1.0, 0.1 } }
local START = { 1.0, -2.0, 0.5 }

before_each(function() T.manual_seed(7) end)

describe("optim.SGD", function()
  it("is reachable from ember", function()
    assert.equal(optim, ember.optim)
  end)

  it("takes plain steps: p -= lr * g", function()
    local p = T.tensor(START, F64)
    run(optim.SGD({ p }, { lr = 0.1 }), p, GRADS)
    local expected = {}
    for i = 1, 3 do
      expected[i] = START[i] - 0.1 * (GRADS[1][i] + GRADS[2][i] + GRADS[3][i])
    end
    assert_values(expected, p)
    assert.is_true(p.is_leaf and p.requires_grad)
  end)

  it("uses momentum with dampening over 3 steps", function()
    local lr, m, d = 0.1, 0.9, 0.2
    local p = T.tensor(START, F64)
    run(optim.SGD({ p }, { lr = lr, momentum = m, dampening = d }), p, GRADS)
    for i = 1, 3 do
      -- buf = g on the first step (no dampening), then m * buf + (1 - d) g.
      local x, buf = START[i], nil
      for s = 1, 3 do
        local g = GRADS[s][i]
        buf = buf == nil and g or m * buf + (1 - d) * g
        x = x - lr * buf
      end
      assert.is_true(math.abs(p[i] - x) < 1e-12)
    end
  end)

  it("adds weight decay to the gradient", function()
    local lr, wd = 0.1, 0.01
    local p = T.tensor(START, F64)
    run(optim.SGD({ p }, { lr = lr, weight_decay = wd }), p, GRADS)
    local expected = {}
    for i = 1, 3 do
      local x = START[i]
      for s = 1, 3 do x = x - lr * (GRADS[s][i] + wd * x) end
      expected[i] = x
    end
    assert_values(expected, p)
  end)

  it("takes nesterov steps", function()
    local lr, m, wd = 0.05, 0.8, 0.1
    local p = T.tensor(START, F64)
    run(optim.SGD({ p }, { lr = lr, momentum = m, nesterov = true,
      weight_decay = wd }), p, GRADS)
    local expected = {}
    for i = 1, 3 do
      local x, buf = START[i], nil
      for s = 1, 3 do
        local g = GRADS[s][i] + wd * x
        buf = buf == nil and g or m * buf + g
        x = x - lr * (g + m * buf)
      end
      expected[i] = x
    end
    assert_values(expected, p)
  end)

  it("does not change .grad", function()
    local p = T.tensor(START, F64)
    local opt = optim.SGD({ p }, { lr = 0.1, momentum = 0.9,
      weight_decay = 0.5 })
    run(opt, p, { GRADS[1] })
    assert_values(GRADS[1], p.grad)
    run(opt, p, { GRADS[2] })
    assert_values(GRADS[2], p.grad)
  end)

  it("skips parameters without a gradient", function()
    local a, b = T.tensor(START, F64), T.tensor(START, F64)
    local opt = optim.SGD({ a, b }, { lr = 0.1, momentum = 0.9 })
    a.grad = T.ones({ 3 }, { dtype = "float64" })
    opt:step()
    assert_values({ 0.9, -2.1, 0.4 }, a)
    assert_values(START, b)
    assert.is_nil(opt.state[b])
    assert.is_not_nil(opt.state[a].momentum_buffer)
  end)

  it("follows lr changes in param_groups", function()
    local p = T.tensor(START, F64)
    local opt = optim.SGD({ p }, { lr = 0.1 })
    assert.equal(1, #opt.param_groups)
    assert.equal(0.1, opt.param_groups[1].lr)
    assert.equal(0, opt.param_groups[1].momentum)
    assert.equal(p, opt.param_groups[1].params[1])
    opt.param_groups[1].lr = 1.0
    p.grad = T.ones({ 3 }, { dtype = "float64" })
    opt:step()
    assert_values({ 0, -3, -0.5 }, p)
  end)

  it("takes parameter groups with their own options", function()
    local a, b = T.tensor({ 1.0 }, F64), T.tensor({ 1.0 }, F64)
    local opt = optim.SGD({ { params = { a } }, { params = { b }, lr = 0.5 } },
      { lr = 0.1 })
    assert.equal(2, #opt.param_groups)
    a.grad, b.grad = T.ones({ 1 }, { dtype = "float64" }),
      T.ones({ 1 }, { dtype = "float64" })
    opt:step()
    assert_values({ 0.9 }, a)
    assert_values({ 0.5 }, b)
  end)

  it("accepts a module or its parameters()", function()
    local lin = nn.Linear(3, 2)
    local x = T.randn(4, 3)
    local w0 = lin.weight:clone()
    local opt = optim.SGD(lin:parameters(), { lr = 0.5 })
    lin(x):sum():backward()
    local expected = w0 - lin.weight.grad * 0.5
    opt:step()
    assert.is_true(lin.weight:allclose(expected, 1e-6, 1e-7))
    assert.equal(2, #optim.SGD(lin, { lr = 0.1 }).param_groups[1].params)
  end)

  it("zero_grad drops or zeroes the gradients", function()
    local p = T.tensor(START, F64)
    local opt = optim.SGD({ p }, { lr = 0.1 })
    p.grad = T.ones({ 3 }, { dtype = "float64" })
    opt:zero_grad(false)
    assert_values({ 0, 0, 0 }, p.grad)
    opt:zero_grad()
    assert.is_nil(p.grad)
  end)

  it("runs a closure and returns its loss", function()
    local p = T.tensor({ 3.0 }, F64)
    local opt = optim.SGD({ p }, { lr = 0.25 })
    local loss = opt:step(function()
      opt:zero_grad()
      local l = (p * p):sum()
      l:backward()
      return l
    end)
    assert.equal(9, loss:item())
    assert_values({ 1.5 }, p) -- 3 - 0.25 * 6
  end)

  it("names bad arguments", function()
    local p = T.tensor(START, F64)
    assert.matches("lr is required", error_of(optim.SGD, { p }, {}), 1, true)
    assert.matches("lr is required", error_of(optim.SGD, { p }), 1, true)
    assert.matches("params[2] is not a tensor",
      error_of(optim.SGD, { p, 3 }, { lr = 1 }), 1, true)
    assert.matches("params[1] does not require grad",
      error_of(optim.SGD, { T.zeros(2) }, { lr = 1 }), 1, true)
    assert.matches("params[1] is not a leaf",
      error_of(optim.SGD, { p * 2 }, { lr = 1 }), 1, true)
    assert.matches("appears more than once",
      error_of(optim.SGD, { p, p }, { lr = 1 }), 1, true)
    assert.matches("empty parameter list",
      error_of(optim.SGD, {}, { lr = 1 }), 1, true)
    assert.matches("invalid lr -1",
      error_of(optim.SGD, { p }, { lr = -1 }), 1, true)
    assert.matches("nesterov",
      error_of(optim.SGD, { p }, { lr = 1, nesterov = true }), 1, true)
  end)
end)

-- Adam by the formulas, on plain numbers.
local function adam_reference(opts, start, grads)
  local lr, b1, b2 = opts.lr or 1e-3, opts.betas[1], opts.betas[2]
  local eps, wd = opts.eps or 1e-8, opts.weight_decay or 0
  local out = {}
  for i = 1, #start do
    local x, m, v, vmax = start[i], 0, 0, 0
    for t, g in ipairs(grads) do
      g = g[i] + wd * x
      m = b1 * m + (1 - b1) * g
      v = b2 * v + (1 - b2) * g * g
      vmax = math.max(vmax, v)
      local second = opts.amsgrad and vmax or v
      local step_size = lr / (1 - b1 ^ t)
      local denom = math.sqrt(second) / math.sqrt(1 - b2 ^ t) + eps
      x = x - step_size * m / denom
    end
    out[i] = x
  end
  return out
end

describe("optim.Adam", function()
  it("has PyTorch's defaults", function()
    local p = T.tensor(START, F64)
    local g = optim.Adam({ p }).param_groups[1]
    assert.equal(1e-3, g.lr)
    assert.same({ 0.9, 0.999 }, g.betas)
    assert.equal(1e-8, g.eps)
    assert.equal(0, g.weight_decay)
    assert.is_false(g.amsgrad)
  end)

  it("takes the first step of size lr * sign(g)", function()
    local p = T.tensor(START, F64)
    run(optim.Adam({ p }, { lr = 0.1 }), p, { GRADS[1] })
    -- m / (1 - b1) = g and sqrt(v / (1 - b2)) = |g|: a step of lr.
    assert_values({ 0.9, -1.9, 0.4 }, p, 1e-7)
  end)

  it("matches the formulas over 3 steps", function()
    local opts = { lr = 0.01, betas = { 0.8, 0.95 }, eps = 1e-6 }
    local p = T.tensor(START, F64)
    run(optim.Adam({ p }, opts), p, GRADS)
    assert_values(adam_reference(opts, START, GRADS), p)
    -- Exact numbers for element 1, worked out step by step:
    -- t=1: m=0.1,   v=0.0125,     x = 1 - 0.01 * 0.5 / (0.5 + 1e-6)
    local x1 = 1 - 0.01 * (0.1 / 0.2) / (math.sqrt(0.0125 / 0.05) + 1e-6)
    -- t=2: m=0.8*0.1+0.2*0.25=0.13, v=0.95*0.0125+0.05*0.0625=0.015
    local x2 = x1 - 0.01 / (1 - 0.64) * 0.13 /
      (math.sqrt(0.015) / math.sqrt(1 - 0.9025) + 1e-6)
    -- t=3: m=0.8*0.13-0.2*0.75=-0.046, v=0.95*0.015+0.05*0.5625=0.042375
    local x3 = x2 - 0.01 / (1 - 0.512) * -0.046 /
      (math.sqrt(0.042375) / math.sqrt(1 - 0.857375) + 1e-6)
    assert.is_true(math.abs(p[1] - x3) < 1e-12)
  end)

  it("adds weight decay and supports amsgrad", function()
    for _, opts in ipairs({
      { lr = 0.05, betas = { 0.9, 0.999 }, weight_decay = 0.1 },
      { lr = 0.05, betas = { 0.5, 0.9 }, amsgrad = true },
      { lr = 0.05, betas = { 0.5, 0.9 }, amsgrad = true, weight_decay = 0.2 },
    }) do
      local p = T.tensor(START, F64)
      run(optim.Adam({ p }, opts), p, GRADS)
      assert_values(adam_reference(opts, START, GRADS), p)
    end
    -- amsgrad matters here: the second moment falls on step 3.
    local plain = adam_reference({ lr = 0.05, betas = { 0.5, 0.9 } },
      START, GRADS)
    local ams = adam_reference({ lr = 0.05, betas = { 0.5, 0.9 },
      amsgrad = true }, START, GRADS)
    assert.is_true(math.abs(plain[3] - ams[3]) > 1e-6)
  end)

  it("keeps step, exp_avg and exp_avg_sq as state", function()
    local p = T.tensor(START, F64)
    local opt = optim.Adam({ p }, { lr = 0.1 })
    run(opt, p, GRADS)
    local s = opt.state[p]
    assert.equal(3, s.step)
    assert.same({ 3 }, s.exp_avg:size())
    assert.same({ 3 }, s.exp_avg_sq:size())
  end)

  it("round-trips its state_dict", function()
    local opts = { lr = 0.05, betas = { 0.8, 0.9 } }
    local a = T.tensor(START, F64)
    local opt_a = optim.Adam({ a }, opts)
    run(opt_a, a, { GRADS[1], GRADS[2] })
    local b = T.tensor(a:totable(), F64)
    local opt_b = optim.Adam({ b }, { lr = 1 })
    local sd = opt_a:state_dict()
    assert.same({ 1 }, sd.param_groups[1].params)
    assert.equal(2, sd.state[1].step)
    opt_b:load_state_dict(sd)
    assert.equal(0.05, opt_b.param_groups[1].lr)
    -- Loaded state is a copy: stepping b leaves a's optimizer alone.
    run(opt_b, b, { GRADS[3] })
    assert.equal(2, opt_a.state[a].step)
    run(opt_a, a, { GRADS[3] })
    assert_values(a:totable(), b)
    assert_values(adam_reference(opts, START, GRADS), b)
    assert.matches("parameter group 1 has 1 parameters in the state_dict, 2",
      error_of(opt_b.load_state_dict,
        optim.Adam({ T.zeros({ 1 }, F64), T.zeros({ 1 }, F64) }), sd), 1, true)
  end)

  it("names bad hyperparameters", function()
    local p = T.tensor(START, F64)
    assert.matches("invalid beta1 1",
      error_of(optim.Adam, { p }, { betas = { 1, 0.9 } }), 1, true)
    assert.matches("invalid eps -1",
      error_of(optim.Adam, { p }, { eps = -1 }), 1, true)
    assert.matches("params[1] is not a tensor",
      error_of(optim.Adam, { "w" }), 1, true)
  end)

  it("fits a linear regression", function()
    local true_w = T.tensor({ { 2.0 }, { -3.0 } })
    local x = T.randn(64, 2)
    local y = x:matmul(true_w) + 0.5
    local lin = nn.Linear(2, 1)
    local opt = optim.Adam(lin:parameters(), { lr = 0.1 })
    local loss_fn = nn.MSELoss()
    local first, last
    for step = 1, 300 do
      opt:zero_grad()
      local loss = loss_fn(lin(x), y)
      loss:backward()
      opt:step()
      if step == 1 then first = loss:item() end
      last = loss:item()
    end
    assert.is_true(last < 1e-4 and last < first / 1000,
      ("loss %g -> %g"):format(first, last))
    assert.is_true(lin.weight:allclose(T.tensor({ { 2.0, -3.0 } }), 1e-2, 1e-2))
    assert.is_true(math.abs(lin.bias[1] - 0.5) < 1e-2)
  end)
end)
