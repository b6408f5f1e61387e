-- ember.nn: modules, layers, losses, init and utils.
local ember = require "ember"
local T = require "ember.tensor"
local nn = require "ember.nn"

local function error_of(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  return tostring(err)
end

local function close(a, b, tol)
  return math.abs(a - b) <= (tol or 1e-6) * math.max(1, math.abs(b))
end

local function assert_close(expected, actual, tol)
  assert(close(actual, expected, tol),
    ("expected %.10g, got %.10g"):format(expected, actual))
end

local function flat(t) return t:reshape({ t:numel() }):totable() end

local function keys_of(iter)
  local names = {}
  for name in iter do names[#names + 1] = name end
  return names
end

-- Central differences of the scalar fn() with respect to every element of
-- every tensor in `inputs` (float64 leaves), against autograd.
local function gradcheck(fn, inputs, eps, tol)
  eps, tol = eps or 1e-6, tol or 1e-5
  for _, x in ipairs(inputs) do x.grad = nil end
  fn():backward()
  local worst = 0
  for k, x in ipairs(inputs) do
    assert(x.grad ~= nil, ("input %d got no gradient"):format(k))
    local analytic = flat(x.grad)
    local view = x:view(x:numel())
    for i = 1, x:numel() do
      local v = view[i]
      local plus = T.no_grad(function()
        view[i] = v + eps
        return fn():item()
      end)
      local minus = T.no_grad(function()
        view[i] = v - eps
        return fn():item()
      end)
      T.no_grad(function() view[i] = v end)
      local numeric = (plus - minus) / (2 * eps)
      local err = math.abs(numeric - analytic[i]) /
        math.max(1, math.abs(numeric))
      worst = math.max(worst, err)
      assert(err <= tol, ("input %d element %d: numeric %.10g, autograd "
        .. "%.10g"):format(k, i, numeric, analytic[i]))
    end
  end
  return worst
end

local function sigmoid(z) return 1 / (1 + math.exp(-z)) end

local Policy = nn.Module:extend("Policy")
function Policy:init(hidden)
  self.affine1 = nn.Linear(4, hidden or 8)
  self.dropout = nn.Dropout(0.6)
  self.affine2 = nn.Linear(hidden or 8, 2)
  self.saved_log_probs = {}
end
function Policy:forward(x)
  local h = self.dropout(self.affine1(x):relu())
  return self.affine2(h):softmax(-1)
end

before_each(function() T.manual_seed(1234) end)

describe("nn.Module", function()
  it("is reachable from ember and constructs with init", function()
    assert.equal(nn, ember.nn)
    local p = Policy(16)
    assert.is_true(nn.is_module(p))
    assert.is_false(nn.is_module(Policy))
    assert.is_false(nn.is_module({}))
    assert.same({ 16, 4 }, p.affine1.weight:size())
    local q = Policy.new(3)
    assert.same({ 2, 3 }, q.affine2.weight:size())
    assert.same({}, q.saved_log_probs)
  end)

  it("registers parameters in assignment order with dotted names", function()
    local p = Policy()
    assert.same({ "affine1.weight", "affine1.bias", "affine2.weight",
      "affine2.bias" }, keys_of(p:named_parameters()))
    local params = p:parameters()
    assert.equal(4, #params)
    assert.equal(p.affine1.weight, params[1])
    assert.equal(p.affine2.bias, params[4])
    assert.equal(8 * 4 + 8 + 2 * 8 + 2, p:num_parameters())
  end)

  it("keeps order for direct tensors, buffers and nested modules", function()
    local Net = nn.Module:extend("Net")
    function Net:init()
      self.scale = T.ones({ 3 }, { requires_grad = true })
      self.body = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1))
      self:register_buffer("running", T.zeros(3))
      self.plain = T.zeros(2) -- no grad: a plain field
      self.offset = T.zeros({ 1 }, { requires_grad = true })
    end
    local n = Net()
    -- As PyTorch: a module's own parameters, then its children's.
    assert.same({ "scale", "offset", "body.1.weight", "body.1.bias",
      "body.3.weight", "body.3.bias" }, keys_of(n:named_parameters()))
    assert.same({ "running" }, keys_of(n:named_buffers()))
    assert.same({ "body" }, keys_of(n:named_children()))
    assert.same({ "", "body", "body.1", "body.2", "body.3" },
      keys_of(n:named_modules()))
    assert.equal(5, #n:modules())
    local sd_keys = {}
    for k in pairs(n:state_dict()) do sd_keys[#sd_keys + 1] = k end
    assert.same({ "scale", "offset", "running", "body.1.weight",
      "body.1.bias", "body.3.weight", "body.3.bias" }, sd_keys)
  end)

  it("deduplicates shared parameters", function()
    local shared = nn.Linear(2, 2)
    local seq = nn.Sequential(shared, shared)
    assert.equal(2, #seq:parameters())
    assert.equal(6, seq:num_parameters())
  end)

  it("replaces and removes parameters by assignment", function()
    local lin = nn.Linear(2, 3)
    local w = T.zeros({ 3, 2 }, { requires_grad = true })
    lin.weight = w
    assert.equal(w, lin:parameters()[1])
    lin.bias = nil
    assert.equal(1, #lin:parameters())
    assert.is_nil(lin.bias)
    local err = error_of(function() lin.weight = T.zeros(3, 2) end)
    assert.matches("parameter 'weight'", err, 1, true)
    -- A computed tensor is a plain field, not a parameter.
    lin.last = lin.weight * 2
    assert.equal(1, #lin:parameters())
  end)

  it("calls forward when called", function()
    local Double = nn.Module:extend("Double")
    function Double:forward(x, k) return x * (k or 2) end
    local d = Double()
    assert.equal(6, d(T.tensor(3.0)):item())
    assert.equal(9, d:forward(T.tensor(3.0), 3):item())
    local err = error_of(function() nn.Module()(T.zeros(1)) end)
    assert.matches("forward is not defined", err, 1, true)
  end)

  it("switches train and eval recursively, changing Dropout", function()
    local p = Policy()
    assert.is_true(p.training)
    assert.is_true(p.dropout.training)
    assert.equal(p, p:eval())
    assert.is_false(p.training)
    assert.is_false(p.dropout.training)
    local x = T.randn(1000)
    assert.is_true(p.dropout(x):equal(x))
    p:train()
    assert.is_true(p.dropout.training)
    local y = flat(p.dropout(x))
    local xs, zeros = flat(x), 0
    for i, v in ipairs(y) do
      if v == 0 then zeros = zeros + 1
      else assert_close(xs[i] / 0.4, v, 1e-5) end
    end
    assert.is_true(zeros > 500 and zeros < 700, "zeros: " .. zeros)
    p:train(false)
    assert.is_false(p.affine1.training)
  end)

  it("zero_grad sets gradients to nil", function()
    local lin = nn.Linear(3, 2)
    lin(T.randn(4, 3)):sum():backward()
    assert.is_not_nil(lin.weight.grad)
    lin:zero_grad()
    assert.is_nil(lin.weight.grad)
    assert.is_nil(lin.bias.grad)
  end)

  it("prints like PyTorch", function()
    assert.equal(table.concat({
      "Policy(",
      "  (affine1): Linear(in_features=4, out_features=8, bias=true)",
      "  (dropout): Dropout(p=0.6)",
      "  (affine2): Linear(in_features=8, out_features=2, bias=true)",
      ")" }, "\n"), tostring(Policy()))
    assert.equal(table.concat({
      "Sequential(",
      "  (1): Linear(in_features=2, out_features=3, bias=false)",
      "  (2): Sequential(",
      "    (1): ReLU()",
      "  )",
      ")" }, "\n"),
      tostring(nn.Sequential(nn.Linear(2, 3, { bias = false }),
        nn.Sequential(nn.ReLU()))))
    assert.equal("LSTM(3, 5, num_layers=2, batch_first=true)",
      tostring(nn.LSTM(3, 5, { num_layers = 2, batch_first = true })))
  end)

  it("converts parameters with to(dtype)", function()
    local lin = nn.Linear(2, 2)
    local before = lin.weight:clone()
    lin:to("float64")
    assert.equal("float64", lin.weight:dtype())
    assert.equal("float64", lin.bias:dtype())
    assert.is_true(lin.weight.requires_grad)
    assert.is_true(lin.weight:allclose(before:to("float64"), 1e-6, 1e-7))
    assert.equal("float64", lin(T.randn({ 1, 2 }, { dtype = "float64" }))
      :dtype())
  end)
end)

describe("state_dict", function()
  it("holds detached references to the parameters", function()
    local lin = nn.Linear(2, 2)
    local sd = lin:state_dict()
    assert.is_false(sd.weight.requires_grad)
    assert.is_true(sd.weight:equal(lin.weight))
    T.no_grad(function() lin.weight:fill_(7) end)
    assert.equal(7, sd.weight[1][1])
  end)

  it("round-trips into a fresh module", function()
    local a, b = Policy(), Policy()
    a:eval(); b:eval()
    local x = T.randn(5, 4)
    assert.is_false(a(x):equal(b(x)))
    local result = b:load_state_dict(a:state_dict())
    assert.same({}, result.missing_keys)
    assert.same({}, result.unexpected_keys)
    assert.is_true(a(x):equal(b(x)))
    -- Copies, not shared storage: changing a leaves b.
    T.no_grad(function() a.affine1.weight:zero_() end)
    assert.is_false(a(x):equal(b(x)))
    assert.is_true(b.affine1.weight.requires_grad)
    assert.is_true(b.affine1.weight.is_leaf)
  end)

  it("names missing and unexpected keys", function()
    local p = Policy()
    local sd = {}
    for k, v in pairs(p:state_dict()) do sd[k] = v end
    sd["affine2.bias"] = nil
    sd["affine3.weight"] = T.zeros(1)
    local err = error_of(p.load_state_dict, p, sd)
    assert.matches("missing keys: affine2.bias", err, 1, true)
    assert.matches("unexpected keys: affine3.weight", err, 1, true)
    local result = p:load_state_dict(sd, { strict = false })
    assert.same({ "affine2.bias" }, result.missing_keys)
    assert.same({ "affine3.weight" }, result.unexpected_keys)
  end)

  it("names shape mismatches", function()
    local big, small = Policy(16), Policy(8)
    local err = error_of(small.load_state_dict, small, big:state_dict())
    assert.matches("'affine1.weight': shape [16, 4] in the state_dict, "
      .. "[8, 4] in the module", err, 1, true)
    err = error_of(small.load_state_dict, small, big:state_dict(),
      { strict = false })
    assert.matches("size mismatch", err, 1, true)
  end)
end)

describe("nn.Linear", function()
  it("has PyTorch's shapes and init bounds", function()
    local lin = nn.Linear(100, 30)
    assert.same({ 30, 100 }, lin.weight:size())
    assert.same({ 30 }, lin.bias:size())
    assert.equal("float32", lin.weight:dtype())
    local bound = 1 / math.sqrt(100)
    for _, t in ipairs({ lin.weight, lin.bias }) do
      assert.is_true(t:abs():max():item() <= bound)
      assert.is_true(t:abs():max():item() > 0.8 * bound)
      assert.is_true(t.requires_grad and t.is_leaf)
    end
    -- U(-b, b) has variance b^2 / 3.
    local var = (lin.weight * lin.weight):mean():item()
    assert.is_true(math.abs(var - bound ^ 2 / 3) < 0.1 * bound ^ 2 / 3)
    assert.is_nil(nn.Linear(3, 2, { bias = false }).bias)
  end)

  it("computes x W^T + b", function()
    local lin = nn.Linear(3, 2)
    local x = T.randn(4, 3)
    local y = lin(x)
    assert.same({ 4, 2 }, y:size())
    local X, W, B = x:totable(), lin.weight:totable(), lin.bias:totable()
    local Y = y:totable()
    for n = 1, 4 do
      for o = 1, 2 do
        local s = B[o]
        for i = 1, 3 do s = s + X[n][i] * W[o][i] end
        assert_close(s, Y[n][o], 1e-5)
      end
    end
    -- 1-D and 3-D input agree with the 2-D path.
    assert.is_true(lin(x[2]):allclose(y[2], 1e-5, 1e-6))
    local y3 = lin(x:reshape(2, 2, 3))
    assert.same({ 2, 2, 2 }, y3:size())
    assert.is_true(y3:reshape(4, 2):allclose(y, 1e-5, 1e-6))
    local nobias = nn.Linear(3, 2, { bias = false })
    assert.is_true(nobias(x):allclose(x:matmul(nobias.weight:t()), 1e-5, 1e-6))
  end)

  it("gives the gradients of a linear map", function()
    local lin = nn.Linear(3, 2)
    local x = T.randn(4, 3)
    lin(x):sum():backward()
    assert.is_true(lin.bias.grad:equal(T.full({ 2 }, 4)))
    local colsum = x:sum(1)
    assert.is_true(lin.weight.grad:allclose(T.stack({ colsum, colsum }),
      1e-5, 1e-6))
  end)

  it("names both shapes on a mismatch", function()
    local err = error_of(nn.Linear(3, 2), T.randn(4, 5))
    assert.matches("[4, 5]", err, 1, true)
    assert.matches("[2, 3]", err, 1, true)
    err = error_of(nn.Linear, 3.5, 2)
    assert.matches("in_features", err, 1, true)
  end)
end)

describe("simple layers", function()
  it("ReLU, Softmax, LogSoftmax, Flatten, Tanh, Sigmoid", function()
    local x = T.tensor({ { -1.0, 2.0 }, { 3.0, -4.0 } })
    assert.same({ { 0, 2 }, { 3, 0 } }, nn.ReLU()(x):totable())
    assert.is_true(nn.Softmax(2)(x):allclose(x:softmax(2)))
    assert.is_true(nn.Softmax()(x):allclose(x:softmax(-1)))
    assert.is_true(nn.LogSoftmax(1)(x):allclose(x:log_softmax(1)))
    assert.is_true(nn.Tanh()(x):allclose(x:tanh()))
    assert.is_true(nn.Sigmoid()(x):allclose(x:sigmoid()))
    assert.same({ 2, 12 }, nn.Flatten()(T.zeros(2, 3, 4)):size())
    assert.same({ 6, 4 }, nn.Flatten(1, 2)(T.zeros(2, 3, 4)):size())
    assert.equal("Softmax(dim=2)", tostring(nn.Softmax(2)))
  end)

  it("Sequential chains, indexes and appends", function()
    local seq = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert.equal(3, #seq)
    assert.equal(seq:get(1), seq[1])
    local x = T.randn(5, 4)
    assert.is_true(seq(x):equal(seq[3](seq[2](seq[1](x)))))
    seq:append(nn.Softmax(2))
    assert.equal(4, #seq)
    assert.same({ 5, 2 }, seq(x):size())
    local from_list = nn.Sequential({ nn.ReLU(), nn.Tanh() })
    assert.equal(2, #from_list)
    local err = error_of(nn.Sequential, nn.ReLU(), 42)
    assert.matches("argument 2 is not a Module", err, 1, true)
  end)

  it("Dropout checks p", function()
    assert.matches("p must be a probability",
      error_of(nn.Dropout, 1.5), 1, true)
    assert.equal(0.5, nn.Dropout().p)
  end)
end)

describe("nn.Embedding", function()
  it("looks up rows by 1-based index, any index shape", function()
    local emb = nn.Embedding(5, 3)
    assert.same({ 5, 3 }, emb.weight:size())
    local idx = T.tensor({ { 1, 3 }, { 5, 3 } })
    local out = emb(idx)
    assert.same({ 2, 2, 3 }, out:size())
    assert.is_true(out[1][2]:equal(emb.weight[3]))
    assert.is_true(out[2][1]:equal(emb.weight[5]))
    assert.same({ 3 }, emb(T.tensor(2)):size())
    assert.is_true(emb(T.tensor(2)):equal(emb.weight[2]))
  end)

  it("accumulates gradients per row", function()
    local emb = nn.Embedding(4, 2)
    emb(T.tensor({ 1, 3, 3, 3 })):sum():backward()
    assert.same({ { 1, 1 }, { 0, 0 }, { 3, 3 }, { 0, 0 } },
      emb.weight.grad:totable())
  end)

  it("initialises from N(0, 1)", function()
    local w = nn.Embedding(1000, 10).weight
    assert.is_true(math.abs(w:mean():item()) < 0.05)
    assert.is_true(math.abs(w:std():item() - 1) < 0.05)
  end)

  it("names out-of-range and non-integer indices", function()
    local emb = nn.Embedding(4, 2)
    local err = error_of(emb, T.tensor({ 1, 7, 0 }))
    assert.matches("out of range 1..4: 7, 0", err, 1, true)
    err = error_of(emb, T.tensor({ 1.0 }))
    assert.matches("integer tensor", err, 1, true)
  end)
end)

describe("nn.LSTM", function()
  it("names and shapes its parameters as PyTorch", function()
    local lstm = nn.LSTM(3, 5, { num_layers = 2 })
    assert.same({ "weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
      "weight_ih_l1", "weight_hh_l1", "bias_ih_l1", "bias_hh_l1" },
      keys_of(lstm:named_parameters()))
    assert.same({ 20, 3 }, lstm.weight_ih_l0:size())
    assert.same({ 20, 5 }, lstm.weight_hh_l0:size())
    assert.same({ 20, 5 }, lstm.weight_ih_l1:size())
    assert.same({ 20 }, lstm.bias_hh_l1:size())
    local k = 1 / math.sqrt(5)
    for _, p in ipairs(lstm:parameters()) do
      assert.is_true(p:abs():max():item() <= k)
    end
    assert.equal(2, #nn.LSTM(3, 5, { bias = false }):parameters())
  end)

  it("gives output and state shapes, 1 and 2 layers", function()
    for _, layers in ipairs({ 1, 2 }) do
      local lstm = nn.LSTM(4, 6, { num_layers = layers })
      local out, hc = lstm(T.randn(7, 3, 4))
      assert.same({ 7, 3, 6 }, out:size())
      assert.same({ layers, 3, 6 }, hc[1]:size())
      assert.same({ layers, 3, 6 }, hc[2]:size())
      -- The last output is the last layer's final h.
      assert.is_true(out[7]:equal(hc[1][layers]))
      -- Unbatched input equals a batch of one.
      local x = T.randn(5, 4)
      local uo, uhc = lstm(x)
      assert.same({ 5, 6 }, uo:size())
      assert.same({ layers, 6 }, uhc[1]:size())
      local bo, bhc = lstm(x:unsqueeze(2))
      assert.is_true(uo:allclose(bo:select(2, 1), 1e-5, 1e-6))
      assert.is_true(uhc[2]:allclose(bhc[2]:select(2, 1), 1e-5, 1e-6))
    end
  end)

  it("takes batch_first input and an initial state", function()
    local lstm = nn.LSTM(4, 6, { num_layers = 2, batch_first = true })
    local x = T.randn(3, 7, 4) -- batch 3, seq 7
    local h0, c0 = T.randn(2, 3, 6), T.randn(2, 3, 6)
    local out, hc = lstm(x, { h0, c0 })
    assert.same({ 3, 7, 6 }, out:size())
    assert.same({ 2, 3, 6 }, hc[1]:size())
    local ref = nn.LSTM(4, 6, { num_layers = 2 })
    ref:load_state_dict(lstm:state_dict())
    local rout, rhc = ref(x:transpose(1, 2), { h0, c0 })
    assert.is_true(out:allclose(rout:transpose(1, 2), 1e-5, 1e-6))
    assert.is_true(hc[2]:allclose(rhc[2], 1e-5, 1e-6))
    -- The state carries over: two halves equal the whole.
    local o1, s1 = ref(x:transpose(1, 2):narrow(1, 1, 3), { h0, c0 })
    local o2, s2 = ref(x:transpose(1, 2):narrow(1, 4, 4), s1)
    assert.is_true(T.cat({ o1, o2 }, 1):allclose(rout, 1e-5, 1e-6))
    assert.is_true(s2[1]:allclose(rhc[1], 1e-5, 1e-6))
  end)

  it("takes PyTorch's positional num_layers", function()
    local lstm = nn.LSTM(4, 6, 2, { dropout = 0.5 })
    assert.equal(2, lstm.num_layers)
    assert.equal(0.5, lstm.dropout)
    -- Dropout between layers only while training.
    lstm:eval()
    local x = T.randn(3, 2, 4)
    assert.is_true(lstm(x):equal(lstm(x)))
  end)

  it("runs sequences longer than 256 steps", function()
    local lstm = nn.LSTM(2, 3)
    local out, hc = lstm(T.randn(300, 1, 2))
    assert.same({ 300, 1, 3 }, out:size())
    assert.is_true(out[300]:equal(hc[1][1]))
  end)

  it("checks input and state shapes", function()
    local lstm = nn.LSTM(4, 6)
    assert.matches("[7, 3, 5]", error_of(lstm, T.randn(7, 3, 5)), 1, true)
    local err = error_of(lstm, T.randn(7, 3, 4), { T.randn(1, 2, 6) })
    assert.matches("h0 of shape [1, 2, 6], expected [1, 3, 6]", err, 1, true)
  end)

  it("computes one step of the cell formulas", function()
    local I, H = 2, 2
    local lstm = nn.LSTM(I, H, { dtype = "float64" })
    local x = T.tensor({ { { 0.5, -1.0 } } }, { dtype = "float64" })
    local h0 = T.tensor({ { { 0.1, -0.2 } } }, { dtype = "float64" })
    local c0 = T.tensor({ { { 0.3, 0.4 } } }, { dtype = "float64" })
    local out, hc = lstm(x, { h0, c0 })
    local Wi, Wh = lstm.weight_ih_l0:totable(), lstm.weight_hh_l0:totable()
    local bi, bh = lstm.bias_ih_l0:totable(), lstm.bias_hh_l0:totable()
    local xv, hv, cv = { 0.5, -1.0 }, { 0.1, -0.2 }, { 0.3, 0.4 }
    local gate = {}
    for r = 1, 4 * H do
      local s = bi[r] + bh[r]
      for j = 1, I do s = s + Wi[r][j] * xv[j] end
      for j = 1, H do s = s + Wh[r][j] * hv[j] end
      gate[r] = s
    end
    for k = 1, H do
      local i = sigmoid(gate[k])
      local f = sigmoid(gate[H + k])
      local g = math.tanh(gate[2 * H + k])
      local o = sigmoid(gate[3 * H + k])
      local c = f * cv[k] + i * g
      local h = o * math.tanh(c)
      assert_close(c, hc[2][1][1][k], 1e-12)
      assert_close(h, hc[1][1][1][k], 1e-12)
      assert_close(h, out[1][1][k], 1e-12)
    end
  end)

  it("is checked by a gradcheck that catches wrong gradients", function()
    local x = T.randn({ 3 }, { dtype = "float64", requires_grad = true })
    -- detach() hides half of the derivative of x^2 from autograd.
    assert.matches("numeric", error_of(gradcheck, function()
      return (x * x:detach()):sum()
    end, { x }), 1, true)
    assert.is_true(gradcheck(function() return (x * x):sum() end, { x }) < 1e-8)
  end)

  it("has the gradients of finite differences (float64)", function()
    local lstm = nn.LSTM(2, 3, { num_layers = 2, dtype = "float64" })
    local x = T.randn({ 4, 2, 2 }, { dtype = "float64", requires_grad = true })
    local h0 = T.randn({ 2, 2, 3 }, { dtype = "float64", requires_grad = true })
    local c0 = T.randn({ 2, 2, 3 }, { dtype = "float64" })
    local r1 = T.randn({ 4, 2, 3 }, { dtype = "float64" })
    local r2 = T.randn({ 2, 2, 3 }, { dtype = "float64" })
    local function fn()
      local out, hc = lstm(x, { h0, c0 })
      return (out * r1):sum() + (hc[2] * r2):sum() + hc[1]:sum()
    end
    local inputs = { x, h0 }
    for _, p in ipairs(lstm:parameters()) do inputs[#inputs + 1] = p end
    gradcheck(fn, inputs)
  end)

  it("sums its outputs' gradients like finite differences", function()
    local lstm = nn.LSTM(3, 2, { dtype = "float64", batch_first = true })
    local x = T.randn({ 2, 3, 3 }, { dtype = "float64", requires_grad = true })
    local inputs = { x }
    for _, p in ipairs(lstm:parameters()) do inputs[#inputs + 1] = p end
    gradcheck(function() return (lstm(x)):sum() end, inputs)
  end)
end)

describe("losses", function()
  it("MSELoss by hand, with each reduction, and its gradient", function()
    local x = T.tensor({ 1.0, 2.0, 4.0 }, { requires_grad = true })
    local y = T.tensor({ 0.0, 2.0, 1.0 })
    -- (1 + 0 + 9) / 3
    assert_close(10 / 3, nn.MSELoss()(x, y):item(), 1e-6)
    assert_close(10, nn.MSELoss({ reduction = "sum" })(x, y):item(), 1e-6)
    assert.same({ 1, 0, 9 },
      nn.MSELoss({ reduction = "none" })(x, y):totable())
    nn.MSELoss()(x, y):backward()
    local g = x.grad:totable()
    assert_close(2 / 3, g[1], 1e-6)
    assert_close(0, g[2], 1e-6)
    assert_close(2, g[3], 1e-6)
    assert.is_true(nn.F.mse_loss(x, y):equal(nn.MSELoss()(x, y)))
  end)

  it("MSELoss names both shapes and checks the reduction", function()
    local err = error_of(nn.MSELoss(), T.zeros(2, 3), T.zeros(3))
    assert.matches("[2, 3]", err, 1, true)
    assert.matches("[3]", err, 1, true)
    assert.matches("reduction must be",
      error_of(nn.MSELoss, { reduction = "avg" }), 1, true)
  end)

  it("CrossEntropyLoss by hand", function()
    local ce = nn.CrossEntropyLoss()
    local logits = T.tensor({ { 1.0, 2.0, 3.0 } }, { dtype = "float64" })
    local lse = math.log(math.exp(1) + math.exp(2) + math.exp(3))
    assert_close(lse - 3, ce(logits, T.tensor({ 3 })):item(), 1e-12)
    assert_close(lse - 1, ce(logits, T.tensor({ 1 })):item(), 1e-12)
    -- Unbatched: logits {C}, a 0-dim target.
    assert_close(lse - 2, ce(logits[1], T.tensor(2)):item(), 1e-12)
    local batch = T.tensor({ { 1.0, 2.0, 3.0 }, { 0.0, 0.0, 0.0 } },
      { dtype = "float64" })
    local target = T.tensor({ 3, 2 })
    local per = { lse - 3, math.log(3) }
    assert_close((per[1] + per[2]) / 2, ce(batch, target):item(), 1e-12)
    assert_close(per[1] + per[2], nn.CrossEntropyLoss({ reduction = "sum" })(
      batch, target):item(), 1e-12)
    local none = nn.CrossEntropyLoss({ reduction = "none" })(batch, target)
    assert_close(per[2], none[2], 1e-12)
  end)

  it("CrossEntropyLoss gradient is (softmax - onehot) / N", function()
    local logits = T.randn({ 3, 4 }, { dtype = "float64", requires_grad = true })
    local target = T.tensor({ 2, 4, 1 })
    nn.CrossEntropyLoss()(logits, target):backward()
    local expected = logits:detach():softmax(2):totable()
    for n = 1, 3 do
      local t = target[n]
      expected[n][t] = expected[n][t] - 1
      for c = 1, 4 do expected[n][c] = expected[n][c] / 3 end
    end
    assert.is_true(logits.grad:allclose(T.tensor(expected,
      { dtype = "float64" }), 1e-10, 1e-12))
  end)

  it("CrossEntropyLoss takes probability targets", function()
    local logits = T.randn({ 2, 3 }, { dtype = "float64" })
    local probs = T.tensor({ { 0.2, 0.3, 0.5 }, { 0.0, 1.0, 0.0 } },
      { dtype = "float64" })
    local lp = logits:log_softmax(2):totable()
    local expected = 0
    for n = 1, 2 do
      for c = 1, 3 do expected = expected - probs[n][c] * lp[n][c] end
    end
    assert_close(expected / 2, nn.F.cross_entropy(logits, probs):item(), 1e-12)
    -- A one-hot probability target is the index target.
    assert_close(nn.F.cross_entropy(logits[2], T.tensor(2)):item(),
      nn.F.cross_entropy(logits[2], probs[2]):item(), 1e-12)
  end)

  it("NLLLoss picks negated log-probabilities", function()
    local lp = T.tensor({ { -0.5, -1.0 }, { -2.0, -0.1 } })
    assert_close((0.5 + 0.1) / 2, nn.NLLLoss()(lp, T.tensor({ 1, 2 })):item(),
      1e-6)
    assert_close(0.6, nn.F.nll_loss(lp, T.tensor({ 1, 2 }),
      { reduction = "sum" }):item(), 1e-6)
  end)

  it("names target problems", function()
    local ce = nn.CrossEntropyLoss()
    local err = error_of(ce, T.zeros(2, 3), T.tensor({ 1, 2, 3 }))
    assert.matches("target of shape [3] does not match input of shape [2, 3]",
      err, 1, true)
    err = error_of(ce, T.zeros(2, 3), T.tensor({ 1, 4 }))
    assert.matches("target class 4 is out of range 1..3", err, 1, true)
    err = error_of(ce, T.zeros(2, 3), T.tensor({ 0, 1 }))
    assert.matches("target class 0 is out of range", err, 1, true)
    err = error_of(ce, T.zeros(2, 3), T.zeros(2, 2))
    assert.matches("[2, 2]", err, 1, true)
  end)
end)

describe("nn.functional", function()
  it("is aliased as nn.F and matches the modules", function()
    assert.equal(nn.functional, nn.F)
    local x = T.randn(3, 4)
    assert.is_true(nn.F.relu(x):equal(x:relu()))
    assert.is_true(nn.F.softmax(x, 1):equal(x:softmax(1)))
    assert.is_true(nn.F.log_softmax(x, 2):equal(x:log_softmax(2)))
    assert.is_true(nn.F.dropout(x, 0.5, false):equal(x))
    local lin = nn.Linear(4, 2)
    assert.is_true(nn.F.linear(x, lin.weight, lin.bias):equal(lin(x)))
    assert.is_true(nn.F.linear(x, lin.weight)
      :allclose(x:matmul(lin.weight:t()), 1e-6, 1e-7))
  end)
end)

describe("nn.init", function()
  it("fills in place under no_grad", function()
    local w = T.empty({ 50, 40 }, { requires_grad = true })
    assert.equal(w, nn.init.zeros_(w))
    assert.equal(0, w:abs():sum():item())
    nn.init.ones_(w)
    assert.equal(2000, w:sum():item())
    nn.init.uniform_(w, -2, -1)
    assert.is_true(w:max():item() <= -1 and w:min():item() >= -2)
    nn.init.normal_(w, 3, 0.5)
    assert.is_true(math.abs(w:mean():item() - 3) < 0.05)
    assert.is_true(w.is_leaf and w.requires_grad)
  end)

  it("kaiming_uniform_ and xavier_uniform_ use the fans", function()
    local w = T.empty(30, 60)
    nn.init.kaiming_uniform_(w, math.sqrt(5))
    local bound = 1 / math.sqrt(60) -- the Linear default
    assert.is_true(w:abs():max():item() <= bound)
    assert.is_true(w:abs():max():item() > 0.9 * bound)
    nn.init.kaiming_uniform_(w)
    bound = math.sqrt(6 / 60)
    assert.is_true(w:abs():max():item() <= bound)
    assert.is_true(w:abs():max():item() > 0.9 * bound)
    nn.init.xavier_uniform_(w)
    bound = math.sqrt(6 / 90)
    assert.is_true(w:abs():max():item() <= bound)
    assert.is_true(w:abs():max():item() > 0.9 * bound)
    assert.matches("at least 2 dims",
      error_of(nn.init.xavier_uniform_, T.zeros(3)), 1, true)
  end)
end)

describe("nn.utils.clip_grad_norm_", function()
  it("scales gradients to max_norm and returns the total norm", function()
    local a = T.zeros({ 2 }, { requires_grad = true })
    local b = T.zeros({ 1 }, { requires_grad = true })
    a.grad = T.tensor({ 3.0, 0.0 })
    b.grad = T.tensor({ 4.0 })
    local total = nn.utils.clip_grad_norm_({ a, b }, 1.0)
    assert_close(5, total, 1e-6)
    assert_close(0.6, a.grad[1], 1e-5)
    assert_close(0.8, b.grad[1], 1e-5)
    -- Below max_norm nothing changes.
    assert_close(1, nn.utils.clip_grad_norm_({ a, b }, 10), 1e-5)
    assert_close(0.6, a.grad[1], 1e-5)
    -- A module works as the parameter list; no grads: norm 0.
    assert.equal(0, nn.utils.clip_grad_norm_(nn.Linear(2, 2), 1))
  end)
end)
