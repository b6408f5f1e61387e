-- ember.tensor_format against the strings PyTorch 1.13's repr(tensor) prints.
local format = require "ember.tensor_format"

local inf, nan = math.huge, 0 / 0

-- {from, ..., to} as floats (torch.arange(n, dtype=float)) or integers.
local function range(from, to, as_float)
  local t = {}
  for i = from, to do t[#t + 1] = as_float and i + 0.0 or i end
  return t
end

local function check(expected, shape, values, opts)
  assert.equal(expected, format.tensor(shape, values, opts))
end

describe("tensor_format floats", function()
  it("prints fixed point with 4 decimals", function()
    check("tensor([0.1000, 2.0000])", { 2 }, { 0.1, 2.0 })
    check("tensor([0.3333, 0.6667])", { 2 }, { 1 / 3, 2 / 3 })
  end)

  it("prints integral floats with a trailing dot", function()
    check("tensor([1., 2.])", { 2 }, { 1.0, 2.0 })
    check("tensor([   1., 1000.])", { 2 }, { 1.0, 1000.0 })
    check("tensor([0., 0.])", { 2 }, { 0.0, 0.0 })
  end)

  it("right-aligns negative numbers", function()
    check("tensor([-1.5000,  2.2500])", { 2 }, { -1.5, 2.25 })
    check("tensor([-2., 10.])", { 2 }, { -2.0, 10.0 })
    check("tensor([-0., 1.])", { 2 }, { -0.0, 1.0 })
  end)

  it("switches to scientific notation", function()
    check("tensor([1.0000e-05, 1.0000e+00])", { 2 }, { 1e-5, 1.0 })
    check("tensor([1.0000e+05, 1.0000e+00])", { 2 }, { 100000.0, 1.0 })
    check("tensor([1.0000e+00, 1.0010e+03])", { 2 }, { 1.0, 1001.0 })
    check("tensor([1.0000e+09])", { 1 }, { 1e9 })
    check("tensor([-1.2346e+05,  1.5000e+00])", { 2 }, { -123456.0, 1.5 })
  end)

  it("ignores zeros when choosing the mode and width", function()
    check("tensor([0.0000, 0.5000])", { 2 }, { 0.0, 0.5 })
    check("tensor([0.0000e+00, 1.0000e-05])", { 2 }, { 0.0, 1e-5 })
  end)

  it("prints inf and nan", function()
    check("tensor([1., inf, nan])", { 3 }, { 1.0, inf, nan })
    check("tensor([0.5000,    nan])", { 2 }, { 0.5, nan })
    check("tensor([0.5000,   -inf])", { 2 }, { 0.5, -inf })
    check("tensor([-inf])", { 1 }, { -inf })
    check("tensor([nan, nan])", { 2 }, { nan, nan })
  end)

  it("rounds float32 values to single precision", function()
    check("tensor([123456.7891])", { 1 }, { 123456.789 })
    check("tensor([123456.7890], dtype=float64)", { 1 }, { 123456.789 }, { dtype = "float64" })
  end)

  it("honours precision and sci_mode options", function()
    check("tensor([1.12])", { 1 }, { 1.12345 }, { precision = 2 })
    check("tensor([1.0000e-01, 2.0000e+00])", { 2 }, { 0.1, 2.0 }, { sci_mode = true })
  end)
end)

describe("tensor_format integers and bools", function()
  it("right-aligns integers", function()
    check("tensor([1, 2, 3])", { 3 }, { 1, 2, 3 })
    check("tensor([ -1,  10, 200])", { 3 }, { -1, 10, 200 })
  end)

  it("prints integral Lua floats of an integer dtype without a dot", function()
    check("tensor([1, 2])", { 2 }, { 1.0, 2.0 }, { dtype = "int64" })
  end)

  it("prints bools as True/False", function()
    check("tensor([ True, False])", { 2 }, { true, false })
    check("tensor([True, True])", { 2 }, { true, true })
    check("tensor([[ True, False],\n        [False,  True]])", { 2, 2 }, { true, false, false, true })
  end)
end)

describe("tensor_format nesting", function()
  it("aligns matrix rows under the first bracket", function()
    check("tensor([[1, 2],\n        [3, 4]])", { 2, 2 }, { 1, 2, 3, 4 })
    check("tensor([[1., 2.],\n        [3., 4.]])", { 2, 2 }, { 1.0, 2.0, 3.0, 4.0 })
  end)

  it("separates 2-D blocks of a 3-D tensor with a blank line", function()
    check("tensor([[[0., 1.],\n" ..
          "         [2., 3.]],\n" ..
          "\n" ..
          "        [[4., 5.],\n" ..
          "         [6., 7.]]])", { 2, 2, 2 }, range(0, 7, true))
  end)

  it("handles size-1 dimensions", function()
    check("tensor([[[5]]])", { 1, 1, 1 }, { 5 })
    check("tensor([[1],\n        [2]])", { 2, 1 }, { 1, 2 })
  end)
end)

describe("tensor_format line wrapping", function()
  it("wraps long float rows at 80 columns", function()
    check("tensor([ 0.,  1.,  2.,  3.,  4.,  5.,  6.,  7.,  8.,  9., 10., 11., 12., 13.,\n" ..
          "        14., 15., 16., 17., 18., 19., 20., 21., 22., 23., 24., 25., 26., 27.,\n" ..
          "        28., 29.])", { 30 }, range(0, 29, true))
  end)

  it("wraps long integer rows at 80 columns", function()
    check("tensor([ 0,  1,  2,  3,  4,  5,  6,  7,  8,  9, 10, 11, 12, 13, 14, 15, 16, 17,\n" ..
          "        18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29])", { 30 }, range(0, 29))
  end)

  it("wraps the rows of a matrix one column further in", function()
    local v = {}
    for i = 0, 19 do v[#v + 1] = i / 8 end
    check("tensor([[0.0000, 0.1250, 0.2500, 0.3750, 0.5000, 0.6250, 0.7500, 0.8750, 1.0000,\n" ..
          "         1.1250],\n" ..
          "        [1.2500, 1.3750, 1.5000, 1.6250, 1.7500, 1.8750, 2.0000, 2.1250, 2.2500,\n" ..
          "         2.3750]])", { 2, 10 }, v)
  end)
end)

describe("tensor_format summarisation", function()
  it("elides the middle of a 2000-element vector", function()
    check("tensor([   0,    1,    2,  ..., 1997, 1998, 1999])", { 2000 }, range(0, 1999))
  end)

  it("sizes the elements from the shown values only", function()
    -- 1..1999 spans more than 1000x, so it goes scientific and wraps.
    check("tensor([0.0000e+00, 1.0000e+00, 2.0000e+00,  ..., 1.9970e+03, 1.9980e+03,\n" ..
          "        1.9990e+03])", { 2000 }, range(0, 1999, true))
  end)

  it("elides rows and columns of a 40x40 matrix", function()
    check("tensor([[   0,    1,    2,  ...,   37,   38,   39],\n" ..
          "        [  40,   41,   42,  ...,   77,   78,   79],\n" ..
          "        [  80,   81,   82,  ...,  117,  118,  119],\n" ..
          "        ...,\n" ..
          "        [1480, 1481, 1482,  ..., 1517, 1518, 1519],\n" ..
          "        [1520, 1521, 1522,  ..., 1557, 1558, 1559],\n" ..
          "        [1560, 1561, 1562,  ..., 1597, 1598, 1599]])", { 40, 40 }, range(0, 1599))
  end)

  it("elides 2-D blocks of a 3-D tensor with a blank line around", function()
    local s = format.tensor({ 20, 10, 10 }, range(1, 2000))
    assert.truthy(s:find("  300]],\n\n        ...,\n\n        [[1701, 1702, 1703,  ..., 1708", 1, true))
    assert.equal("tensor([[[   1,    2,    3,  ...,    8,    9,   10],", s:match("^[^\n]*"))
    assert.equal("         [1991, 1992, 1993,  ..., 1998, 1999, 2000]]])", s:match("[^\n]*$"))
  end)

  it("does not summarise at exactly the threshold", function()
    local s = format.tensor({ 1000 }, range(0, 999))
    assert.falsy(s:find("...", 1, true))
  end)

  it("honours the threshold option", function()
    check("tensor([0, 1, 2,  ..., 7, 8, 9])", { 10 }, range(0, 9), { threshold = 5 })
  end)
end)

describe("tensor_format 0-dim and empty", function()
  it("prints scalars without brackets", function()
    check("tensor(3.5000)", {}, { 3.5 })
    check("tensor(2)", {}, { 2 })
    check("tensor(True)", {}, { true })
    check("tensor(0.)", {}, { 0.0 })
    check("tensor(1.0000e-05)", {}, { 1e-5 })
    check("tensor(1.5000, dtype=float64)", {}, { 1.5 }, { dtype = "float64" })
  end)

  it("prints empty tensors with their size and dtype", function()
    check("tensor([])", { 0 }, {})
    check("tensor([], size=(0, 3))", { 0, 3 }, {})
    check("tensor([], size=(2, 0))", { 2, 0 }, {})
    check("tensor([], dtype=float64)", { 0 }, {}, { dtype = "float64" })
    -- Nothing to infer an integer dtype from, so PyTorch names it.
    check("tensor([], dtype=int64)", { 0 }, {}, { dtype = "int64" })
    check("tensor([], size=(0, 3), dtype=int32)", { 0, 3 }, {}, { dtype = "int32" })
  end)
end)

describe("tensor_format suffixes", function()
  it("names non-default dtypes only", function()
    check("tensor([1., 2.], dtype=float64)", { 2 }, { 1.0, 2.0 }, { dtype = "float64" })
    check("tensor([1, 2], dtype=int32)", { 2 }, { 1, 2 }, { dtype = "int32" })
    check("tensor([1, 2], dtype=uint8)", { 2 }, { 1, 2 }, { dtype = "uint8" })
    check("tensor([1., 2.])", { 2 }, { 1.0, 2.0 }, { dtype = "float32" })
    check("tensor([1, 2])", { 2 }, { 1, 2 }, { dtype = "int64" })
    check("tensor([True])", { 1 }, { true }, { dtype = "bool" })
  end)

  it("shows requires_grad and grad_fn", function()
    check("tensor([1., 2.], dtype=float64, requires_grad=True)", { 2 }, { 1.0, 2.0 },
      { dtype = "float64", requires_grad = true })
    check("tensor(2., requires_grad=True)", {}, { 2.0 }, { requires_grad = true })
    check("tensor([2., 4.], grad_fn=<MulBackward0>)", { 2 }, { 2.0, 4.0 },
      { requires_grad = true, grad_fn = "MulBackward0" })
  end)

  it("shows a non-cpu device first", function()
    check("tensor([1., 2.], device='cuda:0')", { 2 }, { 1.0, 2.0 }, { device = "cuda:0" })
    check("tensor([1., 2.])", { 2 }, { 1.0, 2.0 }, { device = "cpu" })
    check("tensor([1., 2.], device='cuda:0', dtype=float64, grad_fn=<AddBackward0>)",
      { 2 }, { 1.0, 2.0 }, { device = "cuda:0", dtype = "float64", grad_fn = "AddBackward0" })
  end)

  it("moves a suffix that would pass 80 columns to its own line", function()
    check("tensor([ 0.,  1.,  2.,  3.,  4.,  5.,  6.,  7.,  8.,  9., 10., 11., 12., 13.],\n" ..
          "       dtype=float64)", { 14 }, range(0, 13, true), { dtype = "float64" })
    local v = {}
    for i = 1, 12 do v[i] = i / 3 end
    check("tensor([0.3333, 0.6667, 1.0000, 1.3333, 1.6667, 2.0000, 2.3333, 2.6667, 3.0000,\n" ..
          "        3.3333, 3.6667, 4.0000], dtype=float64, requires_grad=True)",
      { 12 }, v, { dtype = "float64", requires_grad = true })
  end)

  it("uses a custom prefix for the indent", function()
    assert.equal("Parameter([[1, 2],\n           [3, 4]])",
      format.tensor({ 2, 2 }, { 1, 2, 3, 4 }, { prefix = "Parameter(" }))
  end)
end)

describe("tensor_format.values", function()
  it("returns just the body", function()
    assert.equal("[[1., 2.],\n        [3., 4.]]", format.values({ 2, 2 }, { 1.0, 2.0, 3.0, 4.0 }))
    assert.equal("[1, 2]", format.values({ 2 }, { 1, 2 }, { dtype = "int32", requires_grad = true }))
    assert.equal("3.5000", format.values({}, { 3.5 }))
    assert.equal("[]", format.values({ 0, 3 }, {}))
  end)

  it("infers the dtype from the values", function()
    assert.equal("[1, 2]", format.values({ 2 }, { 1, 2 }))
    assert.equal("[1.0000, 2.5000]", format.values({ 2 }, { 1, 2.5 }))
  end)

  it("rejects a value count that does not match the shape", function()
    assert.has_error(function() format.values({ 2, 2 }, { 1, 2, 3 }) end)
  end)
end)
