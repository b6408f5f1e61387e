-- Autograd: every differentiable op's backward against central finite
-- differences in float64, then the engine's rules (accumulation,
-- retain_graph, detach, no_grad, deep graphs, grad_fn names, errors).
-- The expected semantics are PyTorch 1.13's, with 1-based dims and indices.
local T = require "ember.tensor"

local F64 = { dtype = "float64" }
local EPS, ATOL, RTOL = 1e-6, 1e-6, 1e-5

local function error_of(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  return tostring(err)
end

-- A float64 leaf that requires grad, from nested tables or a tensor.
local function leaf(data)
  local t = T.is_tensor(data) and data:detach():to("float64", true) or T.tensor(data, F64)
  t.requires_grad = true
  return t
end

-- A float64 leaf of the given shape with values drawn uniformly from [lo, hi).
local function rand_leaf(shape, lo, hi, seed)
  T.manual_seed(seed or 1)
  local t = T.rand(shape, F64) * ((hi or 1) - (lo or -1)) + (lo or -1)
  return leaf(t)
end

-- gradcheck(fn, inputs): fn(inputs...) returns a float64 tensor; its
-- autograd gradient of sum(out * w), w a fixed random weighting (so that a
-- transposed or permuted gradient is caught), is compared element by element
-- with central differences of the same function. Inputs are contiguous
-- float64 leaves; those that do not require grad are left alone.
local function gradcheck(fn, inputs)
  local out = fn(table.unpack(inputs))
  assert.is_true(T.is_tensor(out), "fn must return a tensor")
  assert.equal("float64", out:dtype())
  T.manual_seed(12345)
  local w = T.rand(out:size(), F64) + 0.5
  for _, x in ipairs(inputs) do x.grad = nil end
  local loss = (out * w):sum()
  loss:backward()

  local function f()
    return T.no_grad(function()
      return (fn(table.unpack(inputs)) * w):sum():item()
    end)
  end

  for i, x in ipairs(inputs) do
    if x.requires_grad then
      local flat = T.no_grad(function() return x:view(-1) end)
      local grad = x.grad and x.grad:view(-1)
      if grad ~= nil then
        assert.same(x:size(), x.grad:size(), ("input %d: grad shape"):format(i))
        assert.equal(x:dtype(), x.grad:dtype(), ("input %d: grad dtype"):format(i))
      end
      for k = 1, x:numel() do
        local v = flat[k]
        T.no_grad(function() flat[k] = v + EPS end)
        local fp = f()
        T.no_grad(function() flat[k] = v - EPS end)
        local fm = f()
        T.no_grad(function() flat[k] = v end)
        local numeric = (fp - fm) / (2 * EPS)
        local analytic = grad ~= nil and grad[k] or 0
        if not (math.abs(analytic - numeric) <= ATOL + RTOL * math.abs(numeric)) then
          error(("gradcheck: input %d element %d: autograd %.10g, finite "
            .. "differences %.10g"):format(i, k, analytic, numeric), 2)
        end
      end
    end
  end
  return true
end

-- Values of a tensor as nested tables, compared within tol.
local function close(expected, t, tol)
  local actual = T.is_tensor(t) and t:totable() or t
  local function walk(e, a, path)
    if type(e) == "table" then
      assert.equal(#e, #a, path .. " length")
      for i = 1, #e do walk(e[i], a[i], path .. "[" .. i .. "]") end
    else
      assert.is_true(math.abs(e - a) <= (tol or 1e-9) * (1 + math.abs(e)),
        ("%s: expected %.10g, got %.10g"):format(path, e, a))
    end
  end
  walk(expected, actual, "value")
end

describe("the gradcheck helper", function()
  it("catches a wrong gradient", function()
    local x = rand_leaf({ 3 }, -1, 1, 1)
    -- x:detach() * x has the value x^2 but autograd sees only one factor.
    assert.matches("finite differences", error_of(gradcheck, function(t) return t:detach() * t end, { x }))
  end)

  it("catches a transposed gradient", function()
    local x = rand_leaf({ 2, 2 }, -1, 1, 2)
    -- The value is t:t() but autograd sees t: only the weighting tells them apart.
    assert.matches("finite differences",
      error_of(gradcheck, function(t) return t + (t:t() - t):detach() end, { x }))
  end)
end)

-- ---- Arithmetic ---------------------------------------------------------------

describe("autograd of binary arithmetic", function()
  it("add, sub, mul, div of two tensors", function()
    local a, b = rand_leaf({ 2, 3 }, -1, 1, 1), rand_leaf({ 2, 3 }, 0.5, 2, 2)
    gradcheck(function(x, y) return x + y end, { a, b })
    gradcheck(function(x, y) return x - y end, { a, b })
    gradcheck(function(x, y) return x * y end, { a, b })
    gradcheck(function(x, y) return x / y end, { a, b })
  end)

  it("add and sub with alpha", function()
    local a, b = rand_leaf({ 3 }, -1, 1, 1), rand_leaf({ 3 }, -1, 1, 2)
    gradcheck(function(x, y) return x:add(y, 3) end, { a, b })
    gradcheck(function(x, y) return x:sub(y, 2) end, { a, b })
  end)

  it("tensor with a number on either side", function()
    local a = rand_leaf({ 4 }, 0.5, 2, 3)
    gradcheck(function(x) return x + 2 end, { a })
    gradcheck(function(x) return 2 - x end, { a })
    gradcheck(function(x) return x * 3 end, { a })
    gradcheck(function(x) return 3 * x end, { a })
    gradcheck(function(x) return x / 4 end, { a })
    gradcheck(function(x) return 4 / x end, { a })
  end)

  it("pow: tensor^tensor with a positive base, tensor^number, number^tensor", function()
    local a, b = rand_leaf({ 2, 2 }, 0.5, 2, 4), rand_leaf({ 2, 2 }, -1, 2, 5)
    gradcheck(function(x, y) return x ^ y end, { a, b })
    gradcheck(function(x, y) return x:pow(y) end, { a, b })
    local n = rand_leaf({ 3 }, -2, 2, 6)
    gradcheck(function(x) return x ^ 2 end, { n })
    gradcheck(function(x) return x ^ 3 end, { n })
    gradcheck(function(x) return x ^ 0.5 end, { a })
    gradcheck(function(x) return 2 ^ x end, { n })
    gradcheck(function(x) return 0.5 ^ x end, { n })
  end)

  it("maximum and minimum (no ties)", function()
    local a = leaf { { 1.0, -2.0, 3.5 }, { 0.25, 4.0, -1.0 } }
    local b = leaf { { 0.5, -1.0, 4.0 }, { 1.0, 3.0, -3.0 } }
    gradcheck(function(x, y) return T.maximum(x, y) end, { a, b })
    gradcheck(function(x, y) return T.minimum(x, y) end, { a, b })
  end)

  it("maximum/minimum split the gradient evenly between tied inputs", function()
    local a, b = leaf { 1.0, 2.0 }, leaf { 1.0, 3.0 }
    T.maximum(a, b):sum():backward()
    close({ 0.5, 0 }, a.grad)
    close({ 0.5, 1 }, b.grad)
    local c, d = leaf { 1.0 }, leaf { 1.0 }
    T.minimum(c, d):sum():backward()
    close({ 0.5 }, c.grad)
    close({ 0.5 }, d.grad)
  end)
end)

describe("autograd through broadcasting", function()
  it("sums gradients back to each input's shape, on both sides", function()
    local col, row = rand_leaf({ 3, 1 }, -1, 1, 1), rand_leaf({ 1, 4 }, 0.5, 1.5, 2)
    gradcheck(function(x, y) return x + y end, { col, row })
    gradcheck(function(x, y) return x * y end, { col, row })
    gradcheck(function(x, y) return x / y end, { col, row })
    gradcheck(function(x, y) return y - x end, { col, row })
  end)

  it("{2,3} with {3}, and with a 0-dim tensor", function()
    local m, v = rand_leaf({ 2, 3 }, -1, 1, 3), rand_leaf({ 3 }, 0.5, 2, 4)
    gradcheck(function(x, y) return x * y end, { m, v })
    gradcheck(function(x, y) return x ^ y end, { rand_leaf({ 2, 3 }, 0.5, 2, 5), v })
    local s = leaf(1.5)
    gradcheck(function(x, y) return x * y + y end, { m, s })
    assert.same({}, s.grad:size())
  end)

  it("with a leading dimension added", function()
    gradcheck(function(x, y) return x * y end, { rand_leaf({ 2, 2, 3 }, -1, 1, 6), rand_leaf({ 2, 3 }, -1, 1, 7) })
  end)
end)

-- ---- Unary --------------------------------------------------------------------

describe("autograd of unary functions", function()
  -- Values away from the kinks of abs/relu/clamp.
  local mixed = { { -1.3, -0.4, 0.35 }, { 0.8, 1.7, -2.2 } }

  it("neg, exp, tanh, sigmoid, sin, cos", function()
    for _, name in ipairs { "neg", "exp", "tanh", "sigmoid", "sin", "cos" } do
      local ok, err = pcall(gradcheck, function(x) return x[name](x) end, { leaf(mixed) })
      assert.is_true(ok, name .. ": " .. tostring(err))
    end
    gradcheck(function(x) return -x end, { leaf(mixed) })
  end)

  it("log, sqrt, log1p, reciprocal on positive values", function()
    local pos = rand_leaf({ 2, 3 }, 0.3, 3, 8)
    for _, name in ipairs { "log", "sqrt", "log1p", "reciprocal" } do
      local ok, err = pcall(gradcheck, function(x) return x[name](x) end, { pos })
      assert.is_true(ok, name .. ": " .. tostring(err))
    end
  end)

  it("relu, abs, clamp away from their kinks", function()
    gradcheck(function(x) return x:relu() end, { leaf(mixed) })
    gradcheck(function(x) return T.relu(x) end, { leaf(mixed) })
    gradcheck(function(x) return x:abs() end, { leaf(mixed) })
    gradcheck(function(x) return x:clamp(-1, 1) end, { leaf(mixed) })
    gradcheck(function(x) return x:clamp(0) end, { leaf(mixed) })
    gradcheck(function(x) return x:clamp(nil, 0.5) end, { leaf(mixed) })
  end)

  it("relu and abs have gradient 0 at 0; clamp passes it at its bounds", function()
    local x = leaf { 0.0, 1.0, -1.0 }
    x:relu():sum():backward()
    close({ 0, 1, 0 }, x.grad)
    local y = leaf { 0.0, 1.0, -1.0 }
    y:abs():sum():backward()
    close({ 0, 1, -1 }, y.grad)
    local z = leaf { -1.0, 1.0, 2.0 }
    z:clamp(-1, 1):sum():backward()
    close({ 1, 1, 0 }, z.grad)
  end)

  it("composites: square, norm, dot", function()
    gradcheck(function(x) return x:square() end, { leaf(mixed) })
    gradcheck(function(x) return x:norm() end, { leaf(mixed) })
    gradcheck(function(x) return x:norm(3) end, { leaf(mixed) })
    gradcheck(function(x, y) return T.dot(x, y) end, { rand_leaf({ 4 }, -1, 1, 2), rand_leaf({ 4 }, -1, 1, 3) })
  end)
end)

-- ---- Reductions ----------------------------------------------------------------

describe("autograd of reductions", function()
  local m = { { 0.3, -1.2, 2.5 }, { 1.1, 0.7, -0.4 } } -- no ties

  it("sum and mean: all, over a dim, keepdim", function()
    gradcheck(function(x) return x:sum() end, { leaf(m) })
    gradcheck(function(x) return x:sum(1) end, { leaf(m) })
    gradcheck(function(x) return x:sum(2, true) end, { leaf(m) })
    gradcheck(function(x) return x:sum(-1) end, { leaf(m) })
    gradcheck(function(x) return x:mean() end, { leaf(m) })
    gradcheck(function(x) return x:mean(1) end, { leaf(m) })
    gradcheck(function(x) return x:mean(2, true) end, { leaf(m) })
  end)

  it("prod: all, over a dim, keepdim (no zeros)", function()
    gradcheck(function(x) return x:prod() end, { leaf(m) })
    gradcheck(function(x) return x:prod(1) end, { leaf(m) })
    gradcheck(function(x) return x:prod(2, true) end, { leaf(m) })
  end)

  it("prod's gradient is finite and right when an element is zero", function()
    local x = leaf { 2.0, 0.0, 3.0 }
    x:prod():backward()
    close({ 0, 6, 0 }, x.grad)
    local y = leaf { { 2.0, 0.0 }, { 3.0, 4.0 } }
    y:prod(2):sum():backward()
    close({ { 0, 2 }, { 4, 3 } }, y.grad)
  end)

  it("max and min: all, and the values over a dim, keepdim", function()
    gradcheck(function(x) return x:max() end, { leaf(m) })
    gradcheck(function(x) return x:min() end, { leaf(m) })
    gradcheck(function(x) return (x:max(1)) end, { leaf(m) })
    gradcheck(function(x) return (x:max(2, true)) end, { leaf(m) })
    gradcheck(function(x) return (x:min(2)) end, { leaf(m) })
    gradcheck(function(x) return (x:min(1, true)) end, { leaf(m) })
  end)

  it("max over a dim sends the gradient to the returned index on ties", function()
    local x = leaf { { 3.0, 3.0, 1.0 } }
    local v, i = x:max(2)
    v:sum():backward()
    local g = { 0, 0, 0 }
    g[i[1]] = 1
    close({ g }, x.grad)
  end)

  it("max over everything splits the gradient evenly between ties", function()
    local x = leaf { 1.0, 3.0, 3.0 }
    x:max():backward()
    close({ 0, 0.5, 0.5 }, x.grad)
  end)

  it("std and var: all and over a dim, biased or not", function()
    gradcheck(function(x) return x:var() end, { leaf(m) })
    gradcheck(function(x) return x:std() end, { leaf(m) })
    gradcheck(function(x) return x:var(1) end, { leaf(m) })
    gradcheck(function(x) return x:std(2, { keepdim = true }) end, { leaf(m) })
    gradcheck(function(x) return x:var({ unbiased = false }) end, { leaf(m) })
  end)
end)

-- ---- Matrix products ------------------------------------------------------------

describe("autograd of matrix products", function()
  it("matmul 1-D . 1-D", function()
    gradcheck(T.matmul, { rand_leaf({ 3 }, -1, 1, 1), rand_leaf({ 3 }, -1, 1, 2) })
  end)

  it("matmul 2-D @ 1-D and 1-D @ 2-D", function()
    gradcheck(T.matmul, { rand_leaf({ 2, 3 }, -1, 1, 1), rand_leaf({ 3 }, -1, 1, 2) })
    gradcheck(T.matmul, { rand_leaf({ 2 }, -1, 1, 3), rand_leaf({ 2, 3 }, -1, 1, 4) })
  end)

  it("matmul 2-D @ 2-D, and on a transposed operand", function()
    gradcheck(T.matmul, { rand_leaf({ 2, 3 }, -1, 1, 1), rand_leaf({ 3, 4 }, -1, 1, 2) })
    gradcheck(function(a, b) return a:t():matmul(b) end, { rand_leaf({ 3, 2 }, -1, 1, 3), rand_leaf({ 3, 4 }, -1, 1, 4) })
  end)

  it("matmul batched: 3-D @ 3-D, 3-D @ 2-D, 3-D @ 1-D, 1-D @ 3-D", function()
    gradcheck(T.matmul, { rand_leaf({ 2, 2, 3 }, -1, 1, 1), rand_leaf({ 2, 3, 2 }, -1, 1, 2) })
    gradcheck(T.matmul, { rand_leaf({ 2, 2, 3 }, -1, 1, 3), rand_leaf({ 3, 2 }, -1, 1, 4) })
    gradcheck(T.matmul, { rand_leaf({ 2, 2, 3 }, -1, 1, 5), rand_leaf({ 3 }, -1, 1, 6) })
    gradcheck(T.matmul, { rand_leaf({ 2 }, -1, 1, 7), rand_leaf({ 3, 2, 4 }, -1, 1, 8) })
    gradcheck(T.matmul, { rand_leaf({ 1, 2, 3 }, -1, 1, 9), rand_leaf({ 2, 3, 2 }, -1, 1, 10) })
  end)

  it("mm", function()
    gradcheck(T.mm, { rand_leaf({ 2, 3 }, -1, 1, 1), rand_leaf({ 3, 2 }, -1, 1, 2) })
  end)

  it("addmm with a 1-D and a 2-D bias, beta and alpha", function()
    local a, b = rand_leaf({ 2, 3 }, -1, 1, 1), rand_leaf({ 3, 4 }, -1, 1, 2)
    gradcheck(T.addmm, { rand_leaf({ 4 }, -1, 1, 3), a, b })
    gradcheck(T.addmm, { rand_leaf({ 2, 4 }, -1, 1, 4), a, b })
    gradcheck(function(c, x, y) return c:addmm(x, y, { beta = 0.5, alpha = 2 }) end,
      { rand_leaf({ 1, 4 }, -1, 1, 5), a, b })
  end)
end)

-- ---- Softmax --------------------------------------------------------------------

describe("autograd of softmax", function()
  it("softmax over dims 1 and 2", function()
    local x = rand_leaf({ 3, 4 }, -2, 2, 1)
    gradcheck(function(t) return t:softmax(1) end, { x })
    gradcheck(function(t) return t:softmax(2) end, { x })
    gradcheck(function(t) return T.softmax(t, -1) end, { x })
  end)

  it("log_softmax over dims 1 and 2", function()
    local x = rand_leaf({ 3, 4 }, -2, 2, 2)
    gradcheck(function(t) return t:log_softmax(1) end, { x })
    gradcheck(function(t) return t:log_softmax(2) end, { x })
  end)

  it("softmax and log_softmax over the middle dim of a 3-D tensor", function()
    local x = rand_leaf({ 2, 3, 2 }, -2, 2, 4)
    gradcheck(function(t) return t:softmax(2) end, { x })
    gradcheck(function(t) return t:log_softmax(2) end, { x })
  end)

  it("softmax of a non-contiguous input", function()
    gradcheck(function(t) return t:t():softmax(2) end, { rand_leaf({ 3, 4 }, -2, 2, 3) })
  end)
end)

-- ---- Views ------------------------------------------------------------------------

describe("autograd of views", function()
  local function x23(seed) return rand_leaf({ 2, 3 }, -1, 1, seed) end

  it("view and reshape (a view and a copy)", function()
    gradcheck(function(t) return t:view(3, 2) end, { x23(1) })
    gradcheck(function(t) return t:view(-1) end, { x23(2) })
    gradcheck(function(t) return t:reshape(6) end, { x23(3) })
    gradcheck(function(t) return t:t():reshape(6) end, { x23(4) })
  end)

  it("t, transpose, permute", function()
    gradcheck(function(t) return t:t() end, { x23(1) })
    gradcheck(function(t) return t:transpose(1, 2) end, { x23(2) })
    gradcheck(function(t) return t:permute(3, 1, 2) end, { rand_leaf({ 2, 3, 4 }, -1, 1, 3) })
    gradcheck(function(t) return t:permute(2, 3, 1) end, { rand_leaf({ 2, 3, 4 }, -1, 1, 4) })
  end)

  it("narrow and select", function()
    gradcheck(function(t) return t:narrow(2, 2, 2) end, { x23(1) })
    gradcheck(function(t) return t:narrow(1, 2, 1) end, { x23(2) })
    gradcheck(function(t) return t:select(2, 3) end, { x23(3) })
    gradcheck(function(t) return t:select(1, -1) end, { x23(4) })
    gradcheck(function(t) return t[2] end, { x23(5) })
  end)

  it("unsqueeze, squeeze, expand, flatten", function()
    gradcheck(function(t) return t:unsqueeze(2) end, { x23(1) })
    gradcheck(function(t) return t:squeeze() end, { rand_leaf({ 2, 1, 3 }, -1, 1, 2) })
    gradcheck(function(t) return t:squeeze(2) end, { rand_leaf({ 2, 1, 3 }, -1, 1, 3) })
    gradcheck(function(t) return t:expand(2, 3) end, { rand_leaf({ 2, 1 }, -1, 1, 4) })
    gradcheck(function(t) return t:expand(4, 2, 3) end, { x23(5) })
    gradcheck(function(t) return t:flatten() end, { rand_leaf({ 2, 3, 2 }, -1, 1, 6) })
    gradcheck(function(t) return t:flatten(2) end, { rand_leaf({ 2, 3, 2 }, -1, 1, 7) })
  end)

  it("clone and contiguous", function()
    gradcheck(function(t) return t:clone() end, { x23(1) })
    gradcheck(function(t) return t:t():contiguous() end, { x23(2) })
  end)

  it("split, chunk and unbind pieces", function()
    gradcheck(function(t) return t:split(2, 2)[2] * 2 + t:chunk(2, 2)[1]:sum() end, { x23(1) })
    gradcheck(function(t) return t:unbind(1)[2] end, { x23(2) })
  end)
end)

-- ---- Joining and indexing ---------------------------------------------------------

describe("autograd of cat, stack, gather, scatter, index_select, where", function()
  it("cat over dims 1 and 2", function()
    local a, b = rand_leaf({ 2, 3 }, -1, 1, 1), rand_leaf({ 1, 3 }, -1, 1, 2)
    gradcheck(function(x, y) return T.cat({ x, y }) end, { a, b })
    local c = rand_leaf({ 2, 2 }, -1, 1, 3)
    gradcheck(function(x, y) return T.cat({ x, y, x }, 2) end, { a, c })
  end)

  it("stack over dims 1 and 3", function()
    local a, b = rand_leaf({ 2, 3 }, -1, 1, 1), rand_leaf({ 2, 3 }, -1, 1, 2)
    gradcheck(function(x, y) return T.stack({ x, y }) end, { a, b })
    gradcheck(function(x, y) return T.stack({ x, y }, 3) end, { a, b })
  end)

  it("gather, with repeated indices", function()
    local idx = T.tensor { { 3, 1, 3 }, { 2, 2, 1 } }
    gradcheck(function(x) return x:gather(2, idx) end, { rand_leaf({ 2, 3 }, -1, 1, 1) })
    gradcheck(function(x) return x:gather(1, T.tensor { { 2, 1 } }) end, { rand_leaf({ 2, 3 }, -1, 1, 2) })
  end)

  it("scatter into x and from src", function()
    local idx = T.tensor { { 3, 1 }, { 2, 3 } }
    gradcheck(function(x, s) return x:scatter(2, idx, s) end,
      { rand_leaf({ 2, 3 }, -1, 1, 1), rand_leaf({ 2, 2 }, -1, 1, 2) })
    gradcheck(function(x) return x:scatter(2, idx, 0.5) end, { rand_leaf({ 2, 3 }, -1, 1, 3) })
  end)

  it("scatter from a src larger than the index", function()
    local idx = T.tensor { { 2, 1, 3 } }
    gradcheck(function(x, s) return x:scatter(1, idx, s) end,
      { rand_leaf({ 3, 3 }, -1, 1, 1), rand_leaf({ 2, 3 }, -1, 1, 2) })
  end)

  it("scatter_add into x and from src, repeated indices", function()
    local idx = T.tensor { 1, 1, 3 }
    gradcheck(function(x, s) return x:scatter_add(1, idx, s) end,
      { rand_leaf({ 3 }, -1, 1, 1), rand_leaf({ 3 }, -1, 1, 2) })
  end)

  it("index_select, with repeated indices", function()
    local idx = T.tensor { 2, 1, 2 }
    gradcheck(function(x) return x:index_select(1, idx) end, { rand_leaf({ 2, 3 }, -1, 1, 1) })
    gradcheck(function(x) return x:index_select(2, idx) end, { rand_leaf({ 2, 3 }, -1, 1, 2) })
  end)

  it("where, to both branches, broadcasting and with a number", function()
    local c = T.tensor { { true, false, true }, { false, false, true } }
    gradcheck(function(a, b) return T.where(c, a, b) end,
      { rand_leaf({ 2, 3 }, -1, 1, 1), rand_leaf({ 2, 3 }, -1, 1, 2) })
    gradcheck(function(a, b) return T.where(c, a, b) end,
      { rand_leaf({ 3 }, -1, 1, 3), rand_leaf({ 2, 1 }, -1, 1, 4) })
    gradcheck(function(a) return T.where(c, 0.5, a) end, { rand_leaf({ 2, 3 }, -1, 1, 5) })
    gradcheck(function(a) return a:masked_fill(c, 0) end, { rand_leaf({ 2, 3 }, -1, 1, 6) })
  end)
end)

-- ---- Conversions and dropout ---------------------------------------------------------

describe("autograd of conversions and dropout", function()
  it("to(float32) from float64 gives a float64 gradient", function()
    local x = leaf { 1.0, 2.0 }
    local y = x:to("float32")
    assert.equal("float32", y:dtype())
    assert.equal("ToCopyBackward0", y.grad_fn)
    ;(y * T.tensor { 3.0, 4.0 }):sum():backward()
    assert.equal("float64", x.grad:dtype())
    close({ 3, 4 }, x.grad)
  end)

  it("to(float64) from float32 gives a float32 gradient", function()
    local x = T.tensor({ 1.0, 2.0 }, { requires_grad = true })
    local y = x:to("float64")
    ;(y * T.tensor({ 3.0, 4.0 }, F64)):sum():backward()
    assert.equal("float32", x.grad:dtype())
    close({ 3, 4 }, x.grad, 1e-6)
    local z = T.tensor({ 1.0 }, { requires_grad = true })
    z:double():float():sum():backward()
    close({ 1 }, z.grad, 1e-6)
  end)

  it("float32 leaves get float32 gradients through mixed-precision ops", function()
    local a = T.tensor({ 1.0, 2.0 }, { requires_grad = true })
    local b = leaf { 3.0, 4.0 }
    local y = a * b
    assert.equal("float64", y:dtype())
    y:sum():backward()
    assert.equal("float32", a.grad:dtype())
    close({ 3, 4 }, a.grad, 1e-6)
    close({ 1, 2 }, b.grad)
  end)

  it("dropout with a fixed mask (same seed) scales the kept elements", function()
    gradcheck(function(x)
      T.manual_seed(99)
      return T.dropout(x, 0.4)
    end, { rand_leaf({ 4, 5 }, -1, 1, 1) })
    local x = leaf { 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0 }
    T.manual_seed(3)
    local y = T.dropout(x, 0.5)
    y:sum():backward()
    for k = 1, 8 do
      assert.is_true(y[k] == 0 and x.grad[k] == 0 or (y[k] == 2 and x.grad[k] == 2))
    end
  end)

  it("dropout outside training is the identity", function()
    local x = leaf { 1.0, 2.0 }
    T.dropout(x, 0.5, false):sum():backward()
    close({ 1, 1 }, x.grad)
  end)
end)

-- ---- The engine ---------------------------------------------------------------------

describe("autograd engine", function()
  it("a tensor used twice (x * x) gets the sum of both contributions", function()
    local x = leaf { 1.0, -2.0, 3.0 }
    ;(x * x):sum():backward()
    close({ 2, -4, 6 }, x.grad)
    local y = leaf { 2.0 }
    local z = y * 3
    ;(z * z + z):sum():backward() -- d/dy (9y^2 + 3y) = 18y + 3
    close({ 39 }, y.grad)
  end)

  it("a diamond graph accumulates once per path", function()
    gradcheck(function(t)
      local e = t:exp() -- used by three paths
      return e * 2 + e:sin() + e
    end, { leaf { 0.5, 1.5 } })
  end)

  it("gradients accumulate across two backward calls", function()
    local x = leaf { 1.0, 2.0 }
    ;(x * 3):sum():backward()
    close({ 3, 3 }, x.grad)
    ;(x * x):sum():backward()
    close({ 5, 7 }, x.grad)
    x.grad = nil
    ;(x * 2):sum():backward()
    close({ 2, 2 }, x.grad)
  end)

  it("a grad assigned by the user is added to in place by backward", function()
    local x = leaf { 1.0, 2.0 }
    x.grad = T.tensor({ 10.0, 20.0 }, F64)
    x:sum():backward()
    close({ 11, 21 }, x.grad)
  end)

  it("a second backward without retain_graph is an error naming retain_graph", function()
    local x = leaf { 1.0, 2.0 }
    local y = (x * x):sum()
    y:backward()
    assert.matches("retain_graph", error_of(function() y:backward() end))
    close({ 2, 4 }, x.grad)
  end)

  it("with retain_graph a second backward works and accumulates", function()
    local x = leaf { 1.0, 2.0 }
    local y = (x * x):sum()
    y:backward({ retain_graph = true })
    close({ 2, 4 }, x.grad)
    y:backward()
    close({ 4, 8 }, x.grad)
    local z = (x:exp()):sum()
    z:backward(nil, { retain_graph = true })
    z:backward()
  end)

  it("a second backward through a graph without saved tensors works, as in PyTorch", function()
    local x = leaf { 1.0, 2.0 }
    local y = (x + 1):sum()
    y:backward()
    y:backward()
    close({ 2, 2 }, x.grad)
  end)

  it("an in-place op on a non-leaf is recorded (or refused), never silently dropped", function()
    -- PyTorch records y:mul_(3) (MulBackward0), so x.grad is 6.
    local x = leaf { 1.0, 2.0 }
    local ok = pcall(function()
      local y = x * 2
      y:mul_(3)
      y:sum():backward()
    end)
    if ok then close({ 6, 6 }, x.grad) end
  end)

  it("an element written into a non-leaf stops the gradient there", function()
    -- PyTorch records y[1] = 5 (CopySlices): x.grad is {0, 1}.
    local x = leaf { 1.0, 2.0 }
    local ok = pcall(function()
      local y = x * 1
      y[1] = 5
      y:sum():backward()
    end)
    if ok then close({ 0, 1 }, x.grad) end
  end)

  it("refuses to change a tensor of the graph in place", function()
    local x = leaf { 1.0, 2.0 }
    local y = x:exp()
    local z = (y * y):sum()
    local ok, err = pcall(y.add_, y, 1)
    assert.is_false(ok)
    assert.matches("recorded graph %(ExpBackward0%)", tostring(err))
    z:backward()
    close({ 2 * math.exp(2), 2 * math.exp(4) }, x.grad)
  end)

  it("detects a saved tensor changed in place before backward", function()
    -- PyTorch: "one of the variables needed for gradient computation has
    -- been modified by an inplace operation".
    local x = leaf { 1.0, 2.0 }
    local w = T.tensor({ 3.0, 4.0 }, { dtype = "float64" })
    local z = (x * w):sum()
    w:add_(1)
    local ok, err = pcall(z.backward, z)
    assert.is_false(ok)
    assert.matches("modified by an in%-place operation", tostring(err))
  end)

  it("p.grad:zero_() resets the accumulated gradient in place", function()
    local x = leaf { 1.0, 2.0 }
    ;(x * 2):sum():backward()
    x.grad:zero_()
    ;(x * 3):sum():backward()
    close({ 3, 3 }, x.grad)
  end)

  it("detach cuts the graph", function()
    local x = leaf { 1.0, 2.0 }
    local d = (x * 2):detach()
    assert.is_false(d.requires_grad)
    assert.is_nil(d.grad_fn)
    assert.is_true(d.is_leaf)
    local y = (d * x):sum()
    y:backward()
    close({ 2, 4 }, x.grad)
  end)

  it("no_grad records nothing", function()
    local x = leaf { 1.0, 2.0 }
    local y = T.no_grad(function() return (x * 2):exp():sum() end)
    assert.is_false(y.requires_grad)
    assert.is_nil(y.grad_fn)
    assert.is_true(y.is_leaf)
    assert.matches("does not require grad", error_of(function() y:backward() end))
    local z = T.no_grad(function() return x:view(2, 1) end)
    assert.is_nil(z.grad_fn)
  end)

  it("set_grad_enabled(false) records nothing until re-enabled", function()
    local x = leaf { 1.0 }
    local was = T.set_grad_enabled(false)
    local y = x * 2
    T.set_grad_enabled(was)
    assert.is_nil(y.grad_fn)
    assert.is_not_nil((x * 2).grad_fn)
  end)

  it("a deep chain of 10000 ops backpropagates without overflowing the stack", function()
    local x = leaf { 1.0 }
    local y = x
    for _ = 1, 10000 do y = y * 1.0001 end
    y:sum():backward()
    close({ 1.0001 ^ 10000 }, x.grad, 1e-9)
    y = nil
    collectgarbage()
  end)

  it("a deep chain of mixed ops, freed by the collector afterwards", function()
    local x = leaf { 0.5 }
    local y = x
    for i = 1, 10000 do
      if i % 2 == 0 then y = y + 0.0001 else y = y:view(1) * 1.0 end
    end
    y:sum():backward()
    close({ 1 }, x.grad)
    y = nil
    collectgarbage()
    collectgarbage()
  end)

  it("grad_fn names follow PyTorch", function()
    local x = leaf { 1.0, 2.0 }
    local m = leaf { { 1.0, 2.0 }, { 3.0, 4.0 } }
    local cases = {
      { "AddBackward0", x + 1 }, { "AddBackward0", x + x },
      { "SubBackward0", x - x }, { "MulBackward0", x * x },
      { "DivBackward0", x / x }, { "NegBackward0", -x },
      { "ExpBackward0", x:exp() }, { "TanhBackward0", x:tanh() },
      { "SumBackward0", x:sum() }, { "SumBackward1", m:sum(1) },
      { "MeanBackward0", x:mean() }, { "MeanBackward1", m:mean(1) },
      { "ViewBackward0", x:view(2, 1) }, { "TBackward0", m:t() },
      { "TransposeBackward0", m:transpose(1, 2) },
      { "PermuteBackward0", m:permute(2, 1) },
      { "PowBackward0", x ^ 2 }, { "PowBackward1", x ^ x },
      { "SoftmaxBackward0", x:softmax(1) },
      { "LogSoftmaxBackward0", x:log_softmax(1) },
      { "MmBackward0", T.mm(m, m) }, { "AddmmBackward0", T.addmm(x, m, m) },
      { "CatBackward0", T.cat({ x, x }) }, { "StackBackward0", T.stack({ x, x }) },
      { "CloneBackward0", x:clone() }, { "SelectBackward0", m[1] },
      { "GatherBackward0", m:gather(2, T.tensor { { 1 }, { 2 } }) },
      { "IndexSelectBackward0", m:index_select(1, T.tensor { 1 }) },
      { "MaximumBackward0", T.maximum(x, x) },
    }
    local wrong = {}
    for _, case in ipairs(cases) do
      if case[2].grad_fn ~= case[1] then
        wrong[#wrong + 1] = ("expected %s, got %s"):format(case[1], tostring(case[2].grad_fn))
      end
    end
    assert.are.same({}, wrong)
  end)

  it("is_leaf and requires_grad", function()
    local x = leaf { 1.0 }
    assert.is_true(x.is_leaf)
    assert.is_true(x.requires_grad)
    local y = x * 2
    assert.is_false(y.is_leaf)
    assert.is_true(y.requires_grad)
    local c = T.ones(1)
    assert.is_true(c.is_leaf)
    assert.is_false(c.requires_grad)
    assert.is_false((c * 2).requires_grad)
    assert.is_nil((c * 2).grad_fn)
    assert.is_nil(x.grad)
  end)

  it("requires_grad only on float tensors; only a leaf can stop requiring it", function()
    assert.matches("float", error_of(function() T.tensor { 1 }.requires_grad = true end))
    local x = leaf { 1.0 }
    assert.matches("leaf", error_of(function() (x * 2).requires_grad = false end))
    x.requires_grad = false
    assert.is_false(x.requires_grad)
    local y = T.zeros(2):requires_grad_()
    assert.is_true(y.requires_grad)
  end)

  it("backward on a non-scalar without a gradient is an error naming the shape", function()
    local x = leaf { 1.0, 2.0 }
    local msg = error_of(function() (x * 2):backward() end)
    assert.matches("%[2%]", msg)
  end)

  it("backward with an explicit gradient tensor", function()
    local x = leaf { { 1.0, 2.0 }, { 3.0, 4.0 } }
    local y = x * x
    y:backward(T.tensor({ { 1.0, 0.0 }, { 0.5, 2.0 } }, F64))
    close({ { 2, 0 }, { 3, 16 } }, x.grad)
    local z = leaf { 1.0, 2.0 }
    z:exp():backward(T.tensor { 1.0, 1.0 }) -- a float32 gradient for a float64 root
    close({ math.exp(1), math.exp(2) }, z.grad, 1e-6)
  end)

  it("backward with a gradient of the wrong shape is an error naming both shapes", function()
    local x = leaf { 1.0, 2.0 }
    local msg = error_of(function() (x * 2):backward(T.ones(3, F64)) end)
    assert.matches("%[3%]", msg)
    assert.matches("%[2%]", msg)
  end)

  it("backward on a leaf accumulates the gradient into it", function()
    local x = leaf { 5.0 }
    x:backward()
    close({ 1 }, x.grad)
  end)

  it("inputs that do not require grad get no gradient", function()
    local x, c = leaf { 1.0, 2.0 }, T.tensor({ 3.0, 4.0 }, F64)
    ;(x * c):sum():backward()
    assert.is_nil(c.grad)
    close({ 3, 4 }, x.grad)
  end)

  it("backward leaves grad mode as it was", function()
    local x = leaf { 1.0 }
    x:exp():sum():backward()
    assert.is_true(T.is_grad_enabled())
  end)

  it("a gradient assigned with another shape is refused", function()
    local x = leaf { 1.0, 2.0 }
    assert.matches("shape", error_of(function() x.grad = T.zeros(3, F64) end))
  end)
end)

describe("autograd of a small network", function()
  it("linear -> tanh -> linear -> log_softmax -> gather (a cross-entropy)", function()
    local w1, b1 = rand_leaf({ 3, 4 }, -1, 1, 1), rand_leaf({ 4 }, -1, 1, 2)
    local w2, b2 = rand_leaf({ 4, 2 }, -1, 1, 3), rand_leaf({ 2 }, -1, 1, 4)
    local input = T.tensor({ { 0.5, -1.0, 2.0 }, { 1.5, 0.0, -0.5 } }, F64)
    local target = T.tensor { { 2 }, { 1 } }
    gradcheck(function(a, b, c, d)
      local h = T.addmm(b, input, a):tanh()
      local logp = T.addmm(d, h, c):log_softmax(2)
      return -logp:gather(2, target):mean()
    end, { w1, b1, w2, b2 })
  end)
end)

describe("autograd edge cases", function()
  it("gives 0^0 and a zero base PyTorch's gradients, not NaN", function()
    local a = leaf { 0.0, 2.0 }
    local b = leaf { 0.0, 3.0 }
    T.pow(a, b):sum():backward()
    close({ 0, 12 }, a.grad)
    close({ 0, 8 * math.log(2) }, b.grad)
  end)

  it("adds the gradients of many slices of one tensor", function()
    local x = rand_leaf({ 50, 3 }, -1, 1, 7)
    local total
    for i = 1, 50 do
      local part = (x:select(1, i) * i):sum()
      total = total and total + part or part
    end
    total:backward()
    for i = 1, 50 do
      close({ i, i, i }, x.grad:select(1, i))
    end
  end)
end)
