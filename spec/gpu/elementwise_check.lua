-- Elementwise kernels on the device against the CPU: unary math, binary
-- math with broadcasting, scalars, type promotion, comparisons, where,
-- clamp, pow, and the in-place ops that the optimizers use.
local T = require("ember").tensor

local checks = {}
local function check(name, fn) checks[#checks + 1] = { name, fn } end

local FLOATS = { "float32", "float64" }
local UNARY = { "neg", "exp", "tanh", "sigmoid", "relu", "abs", "sign", "sin",
  "cos", "reciprocal" }
local POSITIVE = { "log", "sqrt", "log1p" }

local function unary(g, x, what)
  for _, op in ipairs(UNARY) do
    g:same(function(a) return a[op](a) end, { x }, { what = what .. " " .. op })
  end
end

for _, dtype in ipairs(FLOATS) do
  check("unary ops, " .. dtype, function(g)
    local x = T.randn(3, 5, { dtype = dtype })
    unary(g, x, dtype)
    local p = T.rand(3, 5, { dtype = dtype }) + 0.1
    for _, op in ipairs(POSITIVE) do
      g:same(function(a) return a[op](a) end, { p }, { what = op })
    end
    -- exp and sigmoid where they saturate or overflow.
    local wide = T.tensor({ -100, -20, 0, 20, 100 }, { dtype = dtype })
    g:same(function(a) return a:exp(), a:sigmoid(), a:tanh() end, { wide },
      { what = "saturating exp, sigmoid, tanh" })
  end)
end

check("unary ops on non-contiguous views", function(g)
  local x = T.randn(4, 6)
  unary(g, x:t(), "transposed")
  g:same(function(a) return a:narrow(2, 2, 3):exp() end, { x },
    { what = "narrowed exp" })
  g:same(function(a) return a:select(2, 4):tanh() end, { x },
    { what = "selected column tanh" })
  g:same(function(a) return a:permute(2, 1):sigmoid():t() end, { x },
    { what = "permuted sigmoid" })
  g:same(function(a) return a:unsqueeze(1):expand(3, 4, 6):relu() end, { x },
    { what = "expanded relu" })
end)

check("unary ops on integers and bools, exact", function(g)
  local i = T.tensor({ { -3, 0, 7 }, { 2, -9, 1 } })
  g:same(function(a) return -a, a:abs(), a:sign(), a:relu() end, { i },
    { what = "int64" })
  g:same(function(a) return -a, a:abs() end, { i:to("int32") },
    { what = "int32" })
  g:same(function(a) return a:logical_not() end,
    { T.tensor({ true, false, true }) }, { what = "bool logical_not" })
  g:same(function(a) return a:logical_not() end, { T.tensor({ 1.5, 0, -2 }) },
    { what = "float logical_not" })
end)

-- Shape pairs that broadcast: same shape, trailing, middle ones, a 0-dim
-- operand, both sides expanding.
local BROADCAST = {
  { { 2, 3, 4 }, { 2, 3, 4 } }, { { 2, 3, 4 }, { 4 } },
  { { 2, 1, 4 }, { 3, 1 } }, { {}, { 2, 3 } }, { { 3, 1 }, { 1, 4 } },
  { { 5 }, { 1 } }, { { 1, 4 }, { 3, 1 } },
}

for _, dtype in ipairs(FLOATS) do
  check("binary ops with broadcasting, " .. dtype, function(g)
    for _, shapes in ipairs(BROADCAST) do
      local a = T.randn(shapes[1], { dtype = dtype })
      local b = T.randn(shapes[2], { dtype = dtype })
      local what = ("[%s] with [%s]"):format(table.concat(shapes[1], ","),
        table.concat(shapes[2], ","))
      g:same(function(x, y)
        return x + y, x - y, x * y, x:maximum(y), x:minimum(y), y - x
      end, { a, b }, { what = what .. " + - * max min" })
      g:same(function(x, y) return x / y, y / x end,
        { a:abs() + 0.5, b:abs() + 0.5 }, { what = what .. " /" })
      g:same(function(x, y) return x:pow(y) end, { a:abs() + 0.1, b },
        { what = what .. " pow" })
    end
  end)
end

check("binary ops on non-contiguous operands", function(g)
  local a, b = T.randn(4, 3), T.randn(3, 4)
  g:same(function(x, y) return x + y:t(), x:t() * y, x:t():sub(y, 2) end,
    { a, b }, { what = "transposed" })
  local c = T.randn(5, 6)
  g:same(function(x) return x:narrow(1, 2, 3) * x:narrow(1, 1, 3) end, { c },
    { what = "narrowed rows" })
  g:same(function(x) return x:narrow(2, 3, 2) + x:select(2, 1):unsqueeze(2) end,
    { c }, { what = "narrowed columns plus a column" })
end)

check("integer arithmetic is exact and promotes as on the CPU", function(g)
  local a = T.tensor({ { 7, -8, 9 }, { 1, 0, -5 } })
  local b = T.tensor({ 3, -2, 4 })
  g:same(function(x, y) return x + y, x - y, x * y, x:maximum(y),
    x:minimum(y) end, { a, b }, { what = "int64" })
  g:same(function(x, y) return x + y, x * y end,
    { a:to("int32"), b:to("int32") }, { what = "int32" })
  g:same(function(x, y) return x + y end, { a:to("int32"), b },
    { what = "int32 + int64" })
  g:same(function(x, y) return x / y end, { a, b }, { what = "int64 / int64" })
  g:same(function(x, y) return x + y, y * x end, { a, T.randn(3) },
    { what = "int64 with float32" })
  g:same(function(x, y) return x + y end, { T.randn(3), T.randn(3, {
    dtype = "float64" }) }, { what = "float32 with float64" })
  g:same(function(x) return x + 1.5, x * 2, x - 1 end, { a },
    { what = "int64 with scalars" })
  g:same(function(x, y) return x + y end,
    { T.tensor({ 1, 2, 3 }, { dtype = "uint8" }), T.tensor({ 250, 5, 0 },
      { dtype = "uint8" }) }, { what = "uint8" })
end)

check("scalar operands on either side", function(g)
  local x = T.randn(2, 3)
  local p = x:abs() + 0.25
  g:same(function(a)
    return a + 2, 2 + a, a - 1.5, 3 - a, a * 0.5, 2 * a, a / 4, -a
  end, { x }, { what = "+ - * / with numbers" })
  g:same(function(a) return 1 / a, a ^ 2, a ^ 0.5, 2 ^ a, a:pow(3) end,
    { p }, { what = "reciprocal and powers" })
  g:same(function(a) return a:add(1, 3), a:sub(2, 0.5) end, { x },
    { what = "add/sub with alpha" })
  local d = T.randn(2, 3, { dtype = "float64" })
  g:same(function(a) return a * 3, a + 0.1, 1 - a end, { d },
    { what = "float64 with numbers" })
end)

check("comparisons and logical results, exact", function(g)
  local a = T.tensor({ { 1, 2, 3 }, { 4, 5, 6 } }, { dtype = "float32" })
  local b = T.tensor({ 3, 2, 1 }, { dtype = "float32" })
  for _, op in ipairs({ "eq", "ne", "lt", "le", "gt", "ge" }) do
    g:same(function(x, y) return x[op](x, y), y[op](y, x) end, { a, b },
      { what = op .. " broadcast" })
    g:same(function(x) return x[op](x, 3), x[op](x, 2.5) end, { a },
      { what = op .. " with a number" })
    g:same(function(x, y) return x[op](x, y) end,
      { a:to("int64"), b:to("int64") }, { what = op .. " int64" })
    g:same(function(x, y) return x[op](x, y) end,
      { T.randn(4, 5, { dtype = "float64" }), T.zeros(5, {
        dtype = "float64" }) }, { what = op .. " float64" })
  end
  g:same(function(x, y) return x:eq(y), x:ne(y) end,
    { T.tensor({ true, false, true }), T.tensor({ true, true, false }) },
    { what = "bool eq/ne" })
end)

check("where with tensors, numbers and a broadcast condition", function(g)
  local x, y = T.randn(3, 4), T.randn(3, 4)
  local cond = x:gt(0)
  g:same(function(c, a, b) return T.where(c, a, b) end, { cond, x, y },
    { what = "tensors" })
  g:same(function(c, b) return T.where(c, 1.5, b), T.where(c, b, 0) end,
    { cond, y }, { what = "numbers" })
  g:same(function(c, a, b) return T.where(c, a, b) end,
    { T.tensor({ { true }, { false }, { true } }), x, T.randn(4) },
    { what = "broadcast condition and operand" })
  g:same(function(a, c) return a:masked_fill(c, -1) end, { x, cond },
    { what = "masked_fill" })
  g:same(function(c, a, b) return T.where(c, a, b) end,
    { cond, x:to("int64"), y:to("int64") }, { what = "int64" })
end)

check("clamp and pow", function(g)
  for _, dtype in ipairs(FLOATS) do
    local x = T.randn(4, 5, { dtype = dtype })
    g:same(function(a)
      return a:clamp(-0.5, 0.5), a:clamp(0), a:clamp(nil, 0), a:clamp_min(0.25)
    end, { x }, { what = dtype .. " clamp" })
    g:same(function(a, b) return a:pow(2), a:abs():pow(b), a:abs():pow(0.5),
      a:pow(3) end, { x, T.randn(5, { dtype = dtype }) },
      { what = dtype .. " pow" })
  end
  g:same(function(a) return a:clamp(2, 6), a:clamp(nil, 4) end,
    { T.tensor({ 1, 5, 9, -3 }) }, { what = "int64 clamp" })
end)

-- The in-place ops of optim.lua and nn.init, on contiguous tensors and on
-- views, whose base must change with them.
check("in-place ops", function(g)
  for _, dtype in ipairs(FLOATS) do
    local x, y, z = T.randn(3, 4, { dtype = dtype }),
      T.randn(3, 4, { dtype = dtype }), T.rand(3, 4, { dtype = dtype }) + 0.5
    g:same(function(a, b, c)
      a = a:clone()
      a:add_(b)
      a:add_(b, 0.5)
      a:sub_(c)
      a:mul_(1.5)
      a:mul_(b)
      a:div_(c)
      a:div_(4)
      a:addcmul_(b, c, 0.1)
      a:addcdiv_(b, c, -0.2)
      local clamped = a:clone():clamp_(-1, 1)
      local rooted = c:clone():sqrt_()
      local negated = a:clone():neg_()
      local rectified = b:clone():relu_()
      return a, clamped, rooted, negated, rectified
    end, { x, y, z }, { what = dtype .. " chain", loose = true })
    g:same(function(a)
      local f, z0 = a:clone():fill_(2.5), a:clone():zero_()
      return f, z0
    end, { x }, { what = dtype .. " fill_ zero_" })
  end
  local base = T.randn(4, 6)
  g:same(function(a)
    a = a:clone()
    a:narrow(2, 2, 3):mul_(10)
    a:select(1, 3):fill_(-1)
    a:t():narrow(1, 6, 1):add_(100)
    return a
  end, { base }, { what = "in place through views" })
  g:same(function(a)
    a = a:clone()
    a[2] = 7
    a[3][4] = -7
    a[1] = T.tensor({ 1, 2, 3, 4, 5, 6 })
    return a
  end, { base }, { what = "element and row assignment" })
end)

return checks
