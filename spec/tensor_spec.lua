-- ember.tensor, op by op, on small cases whose results are checked by hand.
-- The expected semantics are PyTorch 1.13's, with 1-based dims and indices.
local T = require "ember.tensor"

-- ---- Helpers -----------------------------------------------------------------

local function error_of(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  return tostring(err)
end

-- Compares nested tables (or numbers) of floats within tol.
local function close(expected, actual, tol, path)
  path = path or "value"
  if type(expected) == "table" then
    assert.equal("table", type(actual), path .. " is not a table")
    assert.equal(#expected, #actual, path .. " has the wrong length")
    for i = 1, #expected do
      close(expected[i], actual[i], tol, path .. "[" .. i .. "]")
    end
    return
  end
  if expected ~= expected then
    assert.is_true(actual ~= actual, path .. ": expected nan, got " .. tostring(actual))
    return
  end
  assert.is_number(actual, path .. " is not a number")
  assert.is_true(math.abs(expected - actual) <= (tol or 1e-5) * (1 + math.abs(expected)),
    ("%s: expected %.9g, got %.9g"):format(path, expected, actual))
end

-- Asserts a tensor's shape, dtype (when given) and values.
local function check(t, expected, opts)
  opts = opts or {}
  assert.is_true(T.is_tensor(t), "not a tensor")
  if opts.dtype then assert.equal(opts.dtype, t:dtype()) end
  if opts.shape then assert.same(opts.shape, t:size()) end
  if opts.exact then
    assert.same(expected, t:totable())
  else
    close(expected, t:totable(), opts.tol)
  end
end

-- ---- Creation ------------------------------------------------------------------

describe("tensor creation", function()
  it("zeros, ones and full take a shape as varargs or a table", function()
    check(T.zeros(2, 3), { { 0, 0, 0 }, { 0, 0, 0 } }, { shape = { 2, 3 }, dtype = "float32" })
    check(T.zeros({ 2, 3 }), { { 0, 0, 0 }, { 0, 0, 0 } }, { shape = { 2, 3 } })
    check(T.ones(3), { 1, 1, 1 }, { dtype = "float32" })
    check(T.full({ 2, 2 }, 7.5), { { 7.5, 7.5 }, { 7.5, 7.5 } }, { dtype = "float32" })
    check(T.zeros(2, { dtype = "int64" }), { 0, 0 }, { dtype = "int64", exact = true })
    check(T.ones({ 2 }, { dtype = "float64" }), { 1, 1 }, { dtype = "float64" })
  end)

  it("a shape of {} is a 0-dim tensor", function()
    local z = T.zeros({})
    assert.equal(0, z:dim())
    assert.equal(1, z:numel())
    assert.equal(0, z:item())
  end)

  it("full with an integer value infers int64, as torch.full does", function()
    assert.equal("int64", T.full({ 2 }, 7):dtype())
    assert.equal("float32", T.full({ 2 }, 7.0):dtype())
  end)

  it("full fills a bool tensor from a boolean", function()
    check(T.full({ 2 }, true, { dtype = "bool" }), { true, true }, { dtype = "bool", exact = true })
  end)

  it("arange counts up (int64 from integers) and down, with float steps", function()
    check(T.arange(5), { 0, 1, 2, 3, 4 }, { dtype = "int64", exact = true })
    check(T.arange(2, 5), { 2, 3, 4 }, { dtype = "int64", exact = true })
    check(T.arange(5, 0, -2), { 5, 3, 1 }, { exact = true })
    check(T.arange(1, 3, 0.5), { 1, 1.5, 2, 2.5 }, { dtype = "float32" })
    check(T.arange(0, 1, 0.25), { 0, 0.25, 0.5, 0.75 })
  end)

  it("arange honours an options table in every position", function()
    assert.equal("float64", T.arange(4, { dtype = "float64" }):dtype())
    assert.equal("float64", T.arange(1, 4, { dtype = "float64" }):dtype())
    assert.equal("float64", T.arange(1, 4, 1, { dtype = "float64" }):dtype())
  end)

  it("eye is the identity", function()
    check(T.eye(3), { { 1, 0, 0 }, { 0, 1, 0 }, { 0, 0, 1 } }, { dtype = "float32" })
    check(T.eye(2, { dtype = "int64" }), { { 1, 0 }, { 0, 1 } }, { dtype = "int64", exact = true })
  end)

  it("tensor{} infers int64 from Lua integers, float32 from floats, bool from booleans", function()
    check(T.tensor { 1, 2, 3 }, { 1, 2, 3 }, { dtype = "int64", exact = true })
    check(T.tensor { 1.5, 2 }, { 1.5, 2 }, { dtype = "float32" })
    check(T.tensor { { 1, 2.5 }, { 3, 4 } }, { { 1, 2.5 }, { 3, 4 } }, { dtype = "float32" })
    check(T.tensor { { true, false } }, { { true, false } }, { dtype = "bool", exact = true })
    check(T.tensor({ 1, 2 }, { dtype = "float64" }), { 1, 2 }, { dtype = "float64" })
  end)

  it("tensor{} keeps int64 values exactly", function()
    local big = math.maxinteger - 1
    assert.equal(big, T.tensor { big }[1])
    assert.equal(math.mininteger, T.tensor { math.mininteger }[1])
  end)

  it("tensor(number) is 0-dim and tensor{} is empty", function()
    local s = T.tensor(5)
    assert.equal(0, s:dim())
    assert.equal(5, s:item())
    assert.equal("int64", s:dtype())
    assert.equal(2.5, T.tensor(2.5):item())
    local e = T.tensor {}
    assert.same({ 0 }, e:size())
    assert.equal(0, e:numel())
  end)

  it("tensor(t) copies: writes to the copy leave the original", function()
    local a = T.tensor { 1, 2 }
    local b = T.tensor(a)
    b[1] = 9
    assert.equal(1, a[1])
    assert.equal("float64", T.tensor(a, { dtype = "float64" }):dtype())
  end)

  it("ragged nested tables are an error that says ragged", function()
    assert.matches("ragged", error_of(T.tensor, { { 1, 2 }, { 3 } }))
    assert.matches("ragged", error_of(T.tensor, { { 1, 2 }, 3 }))
    assert.matches("ragged", error_of(T.tensor, { 1, { 2, 3 } }))
  end)

  it("tensor{} of multi-element tensors is an error, not their first elements", function()
    -- torch.tensor([torch.tensor([1, 2]), torch.tensor([3, 4])]) raises.
    assert.has_error(function() return T.tensor { T.tensor { 1, 2 }, T.tensor { 3, 4 } } end)
  end)

  it("tensor{} of one-element tensors takes their values", function()
    check(T.tensor { T.tensor(1.5), T.tensor(2.5) }, { 1.5, 2.5 })
  end)

  it("rejects values that are not numbers, booleans or tables", function()
    assert.matches("string", error_of(T.tensor, { 1, "x" }))
  end)

  it("an unknown dtype is an error naming it", function()
    assert.matches("float16", error_of(T.zeros, 2, { dtype = "float16" }))
  end)

  it("zeros_like/ones_like/full_like keep shape and dtype", function()
    local a = T.tensor { { 1, 2 } }
    check(T.zeros_like(a), { { 0, 0 } }, { dtype = "int64", exact = true })
    check(T.ones_like(a), { { 1, 1 } }, { dtype = "int64", exact = true })
    check(T.full_like(a, 3), { { 3, 3 } }, { dtype = "int64", exact = true })
  end)

  it("device = 'cpu' is accepted; another device works or is an error naming it", function()
    assert.equal("cpu", T.zeros(2, { device = "cpu" }):device())
    local x = T.tensor { 1.0, 2.0 }
    check(x:to("cpu"), { 1, 2 })
    check(x:cpu(), { 1, 2 })
    local ok, err = pcall(T.zeros, 2, { device = "cuda" })
    if not ok then assert.matches("cuda", tostring(err)) end
    ok, err = pcall(function() return x:to("cuda") end)
    if not ok then assert.matches("cuda", tostring(err)) end
  end)

  it("size/dim/numel/stride/dtype/device describe the tensor", function()
    local t = T.zeros(2, 3, 4)
    assert.same({ 2, 3, 4 }, t:size())
    assert.same({ 2, 3, 4 }, t.shape)
    assert.equal(3, t:size(2))
    assert.equal(4, t:size(-1))
    assert.equal(3, t:dim())
    assert.equal(24, t:numel())
    assert.same({ 12, 4, 1 }, t:stride())
    assert.equal("cpu", t:device())
    assert.equal(2, #t)
    assert.is_true(t:is_contiguous())
  end)
end)

-- ---- dtypes and promotion -----------------------------------------------------

describe("tensor dtypes", function()
  it("supports float32, float64, int64, int32, uint8 and bool", function()
    for _, d in ipairs { "float32", "float64", "int64", "int32", "uint8", "bool" } do
      assert.equal(d, T.zeros(2, { dtype = d }):dtype())
    end
  end)

  it("converts with to() and the shorthands", function()
    local f = T.tensor { 1.7, -1.7 }
    check(f:to("int64"), { 1, -1 }, { dtype = "int64", exact = true })
    check(f:to("float64"), { 1.7, -1.7 }, { dtype = "float64" })
    assert.equal("float64", f:double():dtype())
    assert.equal("int64", f:long():dtype())
    assert.equal("int32", f:int():dtype())
    assert.equal("uint8", T.tensor { 3 }:byte():dtype())
    check(T.tensor { 0, 2 }:bool(), { false, true }, { exact = true })
    assert.equal("float32", T.tensor { 1 }:float():dtype())
  end)

  it("uint8 wraps around like a C uint8", function()
    check(T.tensor({ 250 }, { dtype = "uint8" }) + 10, { 4 }, { dtype = "uint8", exact = true })
  end)

  it("int + float promotes to float32; float64 wins over float32", function()
    assert.equal("float32", (T.tensor { 1, 2 } + T.tensor { 0.5, 0.5 }):dtype())
    assert.equal("float32", (T.tensor { 1, 2 } * 2.5):dtype())
    assert.equal("int64", (T.tensor { 1, 2 } * 2):dtype())
    assert.equal("float64", (T.tensor { 1, 2 } + T.tensor({ 1, 1 }, { dtype = "float64" })):dtype())
    assert.equal("float64", (T.ones(2, { dtype = "float64" }) * 2):dtype())
    assert.equal("int64", (T.tensor({ 1 }, { dtype = "int32" }) + T.tensor { 1 }):dtype())
    assert.equal("int32", (T.tensor({ 1 }, { dtype = "uint8" }) + T.tensor({ 1 }, { dtype = "int32" })):dtype())
  end)

  it("a 0-dim tensor does not raise a dimensioned tensor's dtype category", function()
    -- PyTorch: 0-dim tensors take part in promotion like Python scalars.
    assert.equal("float32", (T.ones(2) + T.tensor(1.0, { dtype = "float64" })):dtype())
  end)

  it("int / int is a float32 true division", function()
    check(T.tensor { 1, 3 } / T.tensor { 2, 2 }, { 0.5, 1.5 }, { dtype = "float32" })
    check(T.tensor { 3 } / 2, { 1.5 }, { dtype = "float32" })
  end)

  it("comparisons give bool", function()
    check(T.tensor { 1, 2, 3 }:gt(1.5), { false, true, true }, { dtype = "bool", exact = true })
    check(T.tensor { 1, 2 }:eq(T.tensor { 1, 3 }), { true, false }, { exact = true })
    check(T.tensor { 1, 2 }:ne(T.tensor { 1, 3 }), { false, true }, { exact = true })
    check(T.tensor { 1.0, 2.0 }:lt(T.tensor { 2, 2 }), { true, false }, { exact = true })
    check(T.tensor { 1.0, 2.0 }:le(2), { true, true }, { exact = true })
    check(T.tensor { 1.0, 2.0 }:ge(2), { false, true }, { exact = true })
  end)

  it("bool + bool stays bool (logical or), as in PyTorch", function()
    local r = T.tensor { true, false } + T.tensor { true, true }
    assert.equal("bool", r:dtype())
  end)

  it("sum of bools and ints is int64", function()
    local s = T.tensor { true, true, false }:sum()
    assert.equal("int64", s:dtype())
    assert.equal(2, s:item())
    assert.equal("int64", T.tensor({ 1, 2 }, { dtype = "int32" }):sum():dtype())
  end)

  it("math functions of integers compute in float32", function()
    check(T.tensor { 0, 1 }:exp(), { 1, math.exp(1) }, { dtype = "float32" })
    check(T.tensor { 4 }:sqrt(), { 2 }, { dtype = "float32" })
    assert.equal("int64", (-T.tensor { 1 }):dtype())
  end)
end)

-- ---- Views --------------------------------------------------------------------

describe("tensor views", function()
  local function base23()
    return T.tensor { { 1, 2, 3 }, { 4, 5, 6 } }
  end

  it("view and reshape share storage when strides allow", function()
    local b = base23()
    local v = b:view(3, 2)
    check(v, { { 1, 2 }, { 3, 4 }, { 5, 6 } }, { exact = true })
    v[3][2] = 60
    assert.equal(60, b[2][3])
    local r = b:reshape({ 6 })
    r[1] = 10
    assert.equal(10, b[1][1])
    check(b:view(-1, 2), { { 10, 2 }, { 3, 4 }, { 5, 60 } }, { exact = true })
  end)

  it("view refuses a non-contiguous layout and reshape copies instead", function()
    local b = base23()
    assert.matches("reshape", error_of(function() return b:t():view(6) end))
    local r = b:t():reshape(6)
    check(r, { 1, 4, 2, 5, 3, 6 }, { exact = true })
    r[1] = 100
    assert.equal(1, b[1][1])
  end)

  it("view with a wrong element count names the shapes", function()
    local msg = error_of(function() return base23():view(4) end)
    assert.matches("%[4%]", msg)
    assert.matches("%[2, 3%]", msg)
  end)

  it("an empty tensor reshapes and views as {-1}", function()
    assert.same({ 0 }, T.zeros(0):view(-1):size())
    assert.same({ 0 }, T.zeros(2, 0):reshape(-1):size())
    assert.same({ 0, 3 }, T.zeros(0):reshape(0, 3):size())
  end)

  it("t and transpose swap dims and write through", function()
    local b = base23()
    local t = b:t()
    check(t, { { 1, 4 }, { 2, 5 }, { 3, 6 } }, { exact = true })
    assert.is_false(t:is_contiguous())
    t[3][2] = 0
    assert.equal(0, b[2][3])
    check(b:transpose(1, 2), { { 1, 4 }, { 2, 5 }, { 3, 0 } }, { exact = true })
    local c = T.arange(8):view(2, 2, 2)
    check(c:transpose(1, 3), { { { 0, 4 }, { 2, 6 } }, { { 1, 5 }, { 3, 7 } } }, { exact = true })
  end)

  it("t on 1-D is the tensor itself and is an error above 2-D", function()
    local v = T.tensor { 1, 2 }
    check(v:t(), { 1, 2 }, { exact = true })
    assert.matches("transpose", error_of(function() return T.zeros(2, 2, 2):t() end))
  end)

  it("permute reorders dims", function()
    local c = T.arange(6):view(1, 2, 3)
    local p = c:permute(3, 1, 2)
    assert.same({ 3, 1, 2 }, p:size())
    check(p, { { { 0, 3 } }, { { 1, 4 } }, { { 2, 5 } } }, { exact = true })
    p[3][1][2] = 50
    assert.equal(50, c[1][2][3])
    assert.matches("repeat", error_of(function() return c:permute(1, 1, 2) end))
  end)

  it("narrow takes a 1-based start and a length", function()
    local b = base23()
    local n = b:narrow(2, 2, 2)
    check(n, { { 2, 3 }, { 5, 6 } }, { exact = true })
    n:fill_(0)
    check(b, { { 1, 0, 0 }, { 4, 0, 0 } }, { exact = true })
    check(base23():narrow(2, -1, 1), { { 3 }, { 6 } }, { exact = true })
    assert.matches("out of range", error_of(function() return b:narrow(2, 3, 2) end))
  end)

  it("select drops a dim and writes through", function()
    local b = base23()
    check(b:select(2, 3), { 3, 6 }, { exact = true })
    check(b:select(1, -1), { 4, 5, 6 }, { exact = true })
    b:select(1, 1):fill_(9)
    check(b, { { 9, 9, 9 }, { 4, 5, 6 } }, { exact = true })
  end)

  it("unsqueeze adds a size-1 dim (up to dim()+1, negative from the end)", function()
    local v = T.tensor { 1, 2, 3 }
    assert.same({ 1, 3 }, v:unsqueeze(1):size())
    assert.same({ 3, 1 }, v:unsqueeze(2):size())
    assert.same({ 3, 1 }, v:unsqueeze(-1):size())
    local u = v:unsqueeze(1)
    u[1][2] = 20
    assert.equal(20, v[2])
  end)

  it("squeeze drops size-1 dims, all or the one named", function()
    local z = T.zeros(2, 1, 3, 1)
    assert.same({ 2, 3 }, z:squeeze():size())
    assert.same({ 2, 3, 1 }, z:squeeze(2):size())
    assert.same({ 2, 1, 3, 1 }, z:squeeze(1):size())
    local s = z:squeeze()
    s[2][3] = 5
    assert.equal(5, z[2][1][3][1])
  end)

  it("expand broadcasts size-1 dims with stride 0 and shares storage", function()
    local col = T.tensor { { 1 }, { 2 } }
    local e = col:expand(2, 3)
    check(e, { { 1, 1, 1 }, { 2, 2, 2 } }, { exact = true })
    assert.equal(0, e:stride(2))
    check(col:expand(2, 2, -1), { { { 1 }, { 2 } }, { { 1 }, { 2 } } }, { exact = true })
    col[2][1] = 7
    check(e, { { 1, 1, 1 }, { 7, 7, 7 } }, { exact = true })
    local msg = error_of(function() return T.zeros(2, 3):expand(4, 3) end)
    assert.matches("%[2, 3%]", msg)
    assert.matches("%[4, 3%]", msg)
  end)

  it("flatten merges a range of dims", function()
    local z = T.zeros(2, 3, 4)
    assert.same({ 24 }, z:flatten():size())
    assert.same({ 2, 12 }, z:flatten(2):size())
    assert.same({ 6, 4 }, z:flatten(1, 2):size())
  end)

  it("contiguous copies a non-contiguous tensor and returns a contiguous one as is", function()
    local b = base23()
    local c = b:t():contiguous()
    assert.is_true(c:is_contiguous())
    check(c, { { 1, 4 }, { 2, 5 }, { 3, 6 } }, { exact = true })
    c[1][1] = 0
    assert.equal(1, b[1][1])
    local same = b:contiguous()
    same[1][1] = 0
    assert.equal(0, b[1][1])
  end)

  it("split, chunk and unbind give views", function()
    local v = T.arange(5)
    local parts = v:split(2)
    assert.equal(3, #parts)
    check(parts[3], { 4 }, { exact = true })
    assert.equal(2, #v:chunk(2))
    local rows = base23():unbind(1)
    check(rows[2], { 4, 5, 6 }, { exact = true })
  end)
end)

-- ---- Indexing -------------------------------------------------------------------

describe("tensor indexing", function()
  it("t[i] of a 1-D tensor is a Lua number of the tensor's kind", function()
    local i = T.tensor { 10, 20, 30 }
    assert.equal(20, i[2])
    assert.equal("integer", math.type(i[2]))
    local f = T.tensor { 1.5, 2.5 }
    assert.equal(2.5, f[2])
    assert.equal("float", math.type(f[1]))
    assert.is_true(T.tensor { true, false }[1])
  end)

  it("t[i] of a higher tensor is a view of row i", function()
    local m = T.tensor { { 1, 2 }, { 3, 4 } }
    local row = m[2]
    assert.is_true(T.is_tensor(row))
    check(row, { 3, 4 }, { exact = true })
    row[1] = 30
    assert.equal(30, m[2][1])
  end)

  it("t[i][j] = v writes one element", function()
    local m = T.zeros(2, 3)
    m[2][3] = 5
    check(m, { { 0, 0, 0 }, { 0, 0, 5 } })
  end)

  it("t[i] = number fills row i; t[i] = tensor copies into it", function()
    local m = T.zeros(2, 3)
    m[1] = 7
    check(m, { { 7, 7, 7 }, { 0, 0, 0 } })
    m[2] = T.tensor { 1, 2, 3 }
    check(m, { { 7, 7, 7 }, { 1, 2, 3 } })
    local v = T.zeros(3)
    v[2] = 4
    check(v, { 0, 4, 0 })
  end)

  it("negative indices count from the end", function()
    local v = T.tensor { 1, 2, 3 }
    assert.equal(3, v[-1])
    assert.equal(1, v[-3])
    v[-1] = 9
    assert.equal(9, v[3])
    check(T.tensor { { 1, 2 }, { 3, 4 } }[-1], { 3, 4 }, { exact = true })
  end)

  it("out-of-range indices are errors naming the index", function()
    local v = T.zeros(3)
    assert.matches("index 4", error_of(function() return v[4] end))
    assert.matches("index %-4", error_of(function() return v[-4] end))
    assert.matches("index 4", error_of(function() v[4] = 1 end))
    local m = T.zeros(3, 2)
    assert.matches("index 4", error_of(function() return m[4] end))
    assert.matches("index 3", error_of(function() return m[1][3] end))
  end)

  it("index 0 is an error: indices count from 1", function()
    assert.matches("count from 1", error_of(function() return T.zeros(3)[0] end))
    assert.matches("count from 1", error_of(function() return T.zeros(2, 2)[0] end))
  end)

  it("item and totable return Lua values", function()
    assert.equal(5, T.tensor { { 5 } }:item())
    assert.equal(2.5, T.tensor(2.5):item())
    assert.same({ { 1, 2 }, { 3, 4 } }, T.tensor { { 1, 2 }, { 3, 4 } }:totable())
    assert.equal(7, T.tensor(7):totable())
    assert.matches("%[2%]", error_of(function() return T.zeros(2):item() end))
  end)
end)

describe("tensor functions and methods", function()
  it("every op is a function as well as a method (DESIGN.md)", function()
    local missing = {}
    for _, name in ipairs { "scatter_add", "index_fill", "clamp_min" } do
      if T[name] == nil then missing[#missing + 1] = name end
    end
    assert.same({}, missing)
  end)

  it("T.addmm takes the options table that t:addmm takes", function()
    local bias, a = T.tensor { 1.0, 2.0 }, T.tensor { { 1.0, 2.0 }, { 3.0, 4.0 } }
    local want = bias:addmm(a, T.eye(2), { beta = 2, alpha = 3 })
    check(T.addmm(bias, a, T.eye(2), { beta = 2, alpha = 3 }), want:totable())
  end)
end)

-- ---- Element-wise math ------------------------------------------------------------

describe("tensor element-wise math", function()
  it("operators work between tensors and numbers on either side", function()
    local a = T.tensor { 1.0, 2.0, 3.0 }
    check(a + 1, { 2, 3, 4 })
    check(1 + a, { 2, 3, 4 })
    check(a - 1, { 0, 1, 2 })
    check(10 - a, { 9, 8, 7 })
    check(a * 2, { 2, 4, 6 })
    check(a / 2, { 0.5, 1, 1.5 })
    check(6 / a, { 6, 3, 2 })
    check(a ^ 2, { 1, 4, 9 })
    check(2 ^ a, { 2, 4, 8 })
    check(-a, { -1, -2, -3 })
    check(a + a, { 2, 4, 6 })
    check(a * a, { 1, 4, 9 })
    check(a:pow(a), { 1, 4, 27 })
  end)

  it("add and sub take an alpha", function()
    local a = T.tensor { 1.0, 2.0 }
    check(a:add(T.tensor { 1.0, 1.0 }, 3), { 4, 5 })
    check(a:sub(T.tensor { 1.0, 1.0 }, 2), { -1, 0 })
  end)

  it("unary functions", function()
    local x = T.tensor({ -1.0, 0.5, 2.0 }, { dtype = "float64" })
    check(x:exp(), { math.exp(-1), math.exp(0.5), math.exp(2) })
    check(x:abs(), { 1, 0.5, 2 })
    check(x:neg(), { 1, -0.5, -2 })
    check(x:relu(), { 0, 0.5, 2 })
    check(x:sign(), { -1, 1, 1 })
    local function tanh(v) return (math.exp(2 * v) - 1) / (math.exp(2 * v) + 1) end
    check(x:tanh(), { tanh(-1), tanh(0.5), tanh(2) })
    check(x:sigmoid(), { 1 / (1 + math.exp(1)), 1 / (1 + math.exp(-0.5)), 1 / (1 + math.exp(-2)) })
    check(x:sin(), { math.sin(-1), math.sin(0.5), math.sin(2) })
    check(x:cos(), { math.cos(-1), math.cos(0.5), math.cos(2) })
    check(x:clamp(-0.5, 1), { -0.5, 0.5, 1 })
    check(x:clamp(0), { 0, 0.5, 2 })
    check(x:clamp(nil, 0), { -1, 0, 0 })
    check(x:reciprocal(), { -1, 2, 0.5 })
    local p = T.tensor({ 1.0, 4.0 }, { dtype = "float64" })
    check(p:log(), { 0, math.log(4) })
    check(p:sqrt(), { 1, 2 })
    check(p:log1p(), { math.log(2), math.log(5) })
    check(T.tensor { true, false }:logical_not(), { false, true }, { exact = true })
  end)

  it("maximum and minimum are element-wise", function()
    local a, b = T.tensor { 1, 5, 3 }, T.tensor { 4, 2, 3 }
    check(T.maximum(a, b), { 4, 5, 3 }, { exact = true })
    check(T.minimum(a, b), { 1, 2, 3 }, { exact = true })
    check(a:max(b), { 4, 5, 3 }, { exact = true })
  end)

  it("where picks from a or b, numbers allowed", function()
    local c = T.tensor { true, false, true }
    check(T.where(c, T.tensor { 1, 2, 3 }, T.tensor { 10, 20, 30 }), { 1, 20, 3 }, { exact = true })
    check(T.where(T.tensor { true, false }, 1.5, T.tensor { 10, 20 }), { 1.5, 20 }, { dtype = "float32" })
    check(T.where(T.tensor { { true }, { false } }, T.tensor { 1, 2 }, 0), { { 1, 2 }, { 0, 0 } }, { exact = true })
  end)

  it("masked_fill replaces where the mask is true", function()
    check(T.tensor { 1.0, 2.0 }:masked_fill(T.tensor { false, true }, -1), { 1, -1 })
  end)
end)

-- ---- Broadcasting -----------------------------------------------------------------

describe("tensor broadcasting", function()
  it("{3,1} + {1,4} is {3,4}", function()
    local a = T.tensor { { 0 }, { 10 }, { 20 } }
    local b = T.tensor { { 1, 2, 3, 4 } }
    check(a + b, { { 1, 2, 3, 4 }, { 11, 12, 13, 14 }, { 21, 22, 23, 24 } }, { shape = { 3, 4 }, exact = true })
  end)

  it("{2,3} + {3} adds the row to each row", function()
    check(T.tensor { { 1, 2, 3 }, { 4, 5, 6 } } + T.tensor { 10, 20, 30 },
      { { 11, 22, 33 }, { 14, 25, 36 } }, { exact = true })
  end)

  it("a 0-dim tensor broadcasts to anything", function()
    check(T.tensor { { 1, 2 } } * T.tensor(3), { { 3, 6 } }, { exact = true })
  end)

  it("{2,3} + {2} is an error naming both shapes", function()
    local msg = error_of(function() return T.zeros(2, 3) + T.zeros(2) end)
    assert.matches("%[2, 3%]", msg)
    assert.matches("%[2%]", msg)
  end)
end)

-- ---- Reductions -------------------------------------------------------------------

describe("tensor reductions", function()
  local m = T.tensor { { 1.0, 5.0, 2.0 }, { 7.0, 0.0, 3.0 } }

  it("sum over all, a dim, keepdim", function()
    assert.equal(18, m:sum():item())
    assert.equal(0, m:sum():dim())
    check(m:sum(1), { 8, 5, 5 })
    check(m:sum(2), { 8, 10 })
    check(m:sum(-1), { 8, 10 })
    check(m:sum(2, true), { { 8 }, { 10 } }, { shape = { 2, 1 } })
    check(T.tensor { { 1, 2 }, { 3, 4 } }:sum(1, true), { { 4, 6 } }, { dtype = "int64", exact = true })
  end)

  it("mean over all and a dim", function()
    assert.equal(3, m:mean():item())
    check(m:mean(1), { 4, 2.5, 2.5 })
    check(m:mean(2, true), { { 8 / 3 }, { 10 / 3 } })
  end)

  it("mean of a 0-dim tensor over its only dim is the value", function()
    assert.equal(3, T.tensor(3.0):mean(1):item())
    assert.equal(3, T.tensor(3.0):sum(1):item())
  end)

  it("reductions of an empty tensor: sum is 0, max is an error", function()
    assert.equal(0, T.zeros(0):sum():item())
    assert.equal(0, T.zeros(2, 0):sum():item())
    check(T.zeros(2, 0):sum(2), { 0, 0 })
    assert.matches("empty", error_of(function() return T.zeros(0):max() end))
  end)

  it("int64 sums and extremes are exact beyond 2^53", function()
    local big = 9007199254740993 -- 2^53 + 1, not a double
    assert.equal(big, T.tensor { big, 0 }:sum():item())
    assert.equal(big, T.tensor { big, 1 }:max():item())
    assert.equal(big, T.tensor { { big }, { 0 } }:sum(1)[1])
  end)

  it("mean of an integer tensor is an error naming the dtype", function()
    assert.matches("int64", error_of(function() return T.tensor { 1, 2 }:mean() end))
  end)

  it("prod over all and a dim", function()
    assert.equal(0, m:prod():item())
    check(m:prod(2), { 10, 0 })
    check(T.tensor { { 1, 2 }, { 3, 4 } }:prod(2), { 2, 12 }, { dtype = "int64", exact = true })
  end)

  it("max/min without a dim give the value", function()
    assert.equal(7, m:max():item())
    assert.equal(0, m:min():item())
  end)

  it("max/min over a dim give values and 1-based indices", function()
    local v, i = m:max(2)
    check(v, { 5, 7 })
    check(i, { 2, 1 }, { dtype = "int64", exact = true })
    v, i = m:min(1)
    check(v, { 1, 0, 2 })
    check(i, { 1, 2, 1 }, { exact = true })
    v, i = m:max(2, true)
    assert.same({ 2, 1 }, v:size())
    check(i, { { 2 }, { 1 } }, { exact = true })
  end)

  it("argmax/argmin are 1-based, over the flattened tensor without a dim", function()
    assert.equal(4, m:argmax():item())
    assert.equal(5, m:argmin():item())
    check(m:argmax(1), { 2, 1, 2 }, { exact = true })
    check(m:argmax(2), { 2, 1 }, { exact = true })
    check(m:argmin(2, true), { { 1 }, { 2 } }, { exact = true })
  end)

  it("var and std are unbiased by default", function()
    local v = T.tensor { 1.0, 2.0, 3.0, 4.0 }
    close(5 / 3, v:var():item())
    close(1.25, v:var({ unbiased = false }):item())
    close(math.sqrt(5 / 3), v:std():item())
    check(T.tensor { { 1.0, 2.0 }, { 3.0, 5.0 } }:std(1), { math.sqrt(2), math.sqrt(4.5) })
  end)

  it("dimension 0 is an error: dims count from 1", function()
    assert.matches("count from 1", error_of(function() return m:sum(0) end))
    assert.matches("count from 1", error_of(function() return m:max(0) end))
    assert.matches("count from 1", error_of(function() return m:softmax(0) end))
    assert.matches("count from 1", error_of(function() return m:size(0) end))
  end)

  it("a dimension past the last is an error naming it", function()
    assert.matches("dimension 3", error_of(function() return m:sum(3) end))
  end)
end)

-- ---- Matrix products ----------------------------------------------------------------

describe("tensor matmul", function()
  local A = T.tensor { { 1.0, 2.0, 3.0 }, { 4.0, 5.0, 6.0 } }   -- 2x3
  local B = T.tensor { { 1.0, 0.0 }, { 0.0, 1.0 }, { 2.0, -1.0 } } -- 3x2

  it("1-D . 1-D is the dot product (0-dim)", function()
    local d = T.matmul(T.tensor { 1.0, 2.0, 3.0 }, T.tensor { 4.0, 5.0, 6.0 })
    assert.equal(0, d:dim())
    assert.equal(32, d:item())
    assert.equal(32, T.dot(T.tensor { 1.0, 2.0, 3.0 }, T.tensor { 4.0, 5.0, 6.0 }):item())
  end)

  it("2-D @ 1-D and 1-D @ 2-D", function()
    check(A:matmul(T.tensor { 1.0, 1.0, 1.0 }), { 6, 15 }, { shape = { 2 } })
    check(T.tensor { 1.0, 1.0 }:matmul(A), { 5, 7, 9 }, { shape = { 3 } })
  end)

  it("2-D @ 2-D", function()
    check(A:matmul(B), { { 7, -1 }, { 16, -1 } }, { shape = { 2, 2 } })
    check(T.mm(A, B), { { 7, -1 }, { 16, -1 } })
    check(B:matmul(A), { { 1, 2, 3 }, { 4, 5, 6 }, { -2, -1, 0 } })
  end)

  it("works on transposed and narrowed operands", function()
    check(B:t():matmul(A:t()), { { 7, 16 }, { -1, -1 } })
    local wide = T.tensor { { 1.0, 2.0, 9.0 }, { 3.0, 4.0, 9.0 } }
    check(wide:narrow(2, 1, 2):matmul(T.eye(2)), { { 1, 2 }, { 3, 4 } })
  end)

  it("integer matrices multiply exactly", function()
    check(T.tensor { { 1, 2 }, { 3, 4 } }:matmul(T.tensor { { 5, 6 }, { 7, 8 } }),
      { { 19, 22 }, { 43, 50 } }, { dtype = "int64", exact = true })
  end)

  it("batched 3-D @ 3-D multiplies each pair", function()
    local a = T.arange(8, { dtype = "float32" }):view(2, 2, 2):float()
    local b = T.arange(8):view(2, 2, 2):float()
    -- [[0,1],[2,3]]^2 = [[2,3],[6,11]]; [[4,5],[6,7]]^2 = [[46,55],[66,79]]
    check(a:matmul(b), { { { 2, 3 }, { 6, 11 } }, { { 46, 55 }, { 66, 79 } } }, { shape = { 2, 2, 2 } })
  end)

  it("batched 3-D @ 2-D broadcasts the matrix", function()
    local a = T.arange(8):view(2, 2, 2):float()
    check(a:matmul(T.eye(2) * 2), { { { 0, 2 }, { 4, 6 } }, { { 8, 10 }, { 12, 14 } } })
    check(a:matmul(T.tensor { 1.0, 1.0 }), { { 1, 5 }, { 9, 13 } }, { shape = { 2, 2 } })
  end)

  it("a shape mismatch is an error naming both shapes", function()
    local msg = error_of(function() return A:matmul(A) end)
    assert.matches("%[2, 3%]", msg)
    assert.matches("%[2, 3%] cannot", msg)
  end)

  it("addmm is beta * bias + alpha * a @ b, bias broadcast", function()
    local a = T.tensor { { 1.0, 2.0 }, { 3.0, 4.0 } }
    check(T.addmm(T.tensor { 1.0, 2.0 }, a, T.eye(2)), { { 2, 4 }, { 4, 6 } })
    check(T.tensor { 1.0, 2.0 }:addmm(a, T.eye(2), { beta = 2, alpha = 3 }), { { 5, 10 }, { 11, 16 } })
    check(T.addmm(T.ones(2, 2), a, a), { { 8, 11 }, { 16, 23 } })
  end)
end)

-- ---- Softmax --------------------------------------------------------------------------

describe("tensor softmax", function()
  it("softmax rows sum to 1 and match exp(x)/sum(exp(x))", function()
    local x = T.tensor { { 1.0, 2.0, 3.0 }, { 1.0, 1.0, 1.0 } }
    local s = x:softmax(2)
    local e = { math.exp(1), math.exp(2), math.exp(3) }
    local z = e[1] + e[2] + e[3]
    check(s, { { e[1] / z, e[2] / z, e[3] / z }, { 1 / 3, 1 / 3, 1 / 3 } })
    check(s:sum(2), { 1, 1 })
    check(x:softmax(1):sum(1), { 1, 1, 1 })
    check(T.softmax(x, -1), s:totable())
  end)

  it("is stable for large inputs", function()
    check(T.tensor { 1000.0, 1000.0 }:softmax(1), { 0.5, 0.5 })
  end)

  it("log_softmax is log of softmax and its exp sums to 1", function()
    local x = T.tensor { { 1.0, 2.0, 3.0 } }
    local l = x:log_softmax(2)
    local lse = math.log(math.exp(1) + math.exp(2) + math.exp(3))
    check(l, { { 1 - lse, 2 - lse, 3 - lse } })
    check(l:exp():sum(2), { 1 })
    check(x:log_softmax(1), { { 0, 0, 0 } })
  end)
end)

-- ---- Joining and indexing ops -----------------------------------------------------------

describe("tensor cat and stack", function()
  it("cat joins along a dim", function()
    local a, b = T.tensor { { 1, 2 } }, T.tensor { { 3, 4 } }
    check(T.cat({ a, b }), { { 1, 2 }, { 3, 4 } }, { exact = true })
    check(T.cat({ a, b }, 2), { { 1, 2, 3, 4 } }, { exact = true })
    check(T.cat({ T.tensor { 1 }, T.tensor { 2, 3 } }), { 1, 2, 3 }, { exact = true })
  end)

  it("stack adds a dim", function()
    local a, b = T.tensor { 1, 2 }, T.tensor { 3, 4 }
    check(T.stack({ a, b }), { { 1, 2 }, { 3, 4 } }, { exact = true })
    check(T.stack({ a, b }, 2), { { 1, 3 }, { 2, 4 } }, { exact = true })
    check(T.stack({ a, b }, -1), { { 1, 3 }, { 2, 4 } }, { exact = true })
  end)

  it("mismatched shapes are an error naming them", function()
    local msg = error_of(function() return T.cat({ T.zeros(2, 3), T.zeros(3, 2) }) end)
    assert.matches("%[3, 2%]", msg)
    assert.matches("stack", error_of(function() return T.stack({ T.zeros(2), T.zeros(3) }) end))
  end)

  it("cat and stack accept long lists (an episode's worth of steps)", function()
    local list = {}
    for i = 1, 500 do list[i] = T.tensor { i } end
    local c = T.cat(list)
    assert.same({ 500 }, c:size())
    assert.equal(500, c[500])
    assert.same({ 500, 1 }, T.stack(list):size())
  end)
end)

describe("tensor gather, scatter, index_select", function()
  local x = T.tensor { { 1, 2, 3 }, { 4, 5, 6 } }

  it("gather takes 1-based indices along a dim", function()
    check(x:gather(2, T.tensor { { 3, 1 }, { 2, 2 } }), { { 3, 1 }, { 5, 5 } }, { exact = true })
    check(x:gather(1, T.tensor { { 2, 1, 2 } }), { { 4, 2, 6 } }, { exact = true })
  end)

  it("gather index out of range or 0 is an error naming the index", function()
    assert.matches("index 4", error_of(function() return x:gather(2, T.tensor { { 4 }, { 1 } }) end))
    assert.matches("index 0", error_of(function() return x:gather(2, T.tensor { { 0 }, { 1 } }) end))
    assert.matches("integer", error_of(function() return x:gather(2, T.tensor { { 1.0 } }) end))
  end)

  it("scatter writes src at 1-based indices into a copy", function()
    local z = T.zeros(2, 3)
    local r = z:scatter(2, T.tensor { { 3 }, { 1 } }, T.tensor { { 9.0 }, { 8.0 } })
    check(r, { { 0, 0, 9 }, { 8, 0, 0 } })
    check(z, { { 0, 0, 0 }, { 0, 0, 0 } })
    check(T.zeros(2, 3):scatter(2, T.tensor { { 3 }, { 1 } }, 5), { { 0, 0, 5 }, { 5, 0, 0 } })
    check(T.zeros(3, 2):scatter(1, T.tensor { { 3, 1 } }, T.tensor { { 1.0, 2.0 } }), { { 0, 2 }, { 0, 0 }, { 1, 0 } })
  end)

  it("scatter_add accumulates repeated indices", function()
    check(T.zeros(3):scatter_add(1, T.tensor { 1, 1, 3 }, T.tensor { 1.0, 2.0, 3.0 }), { 3, 0, 3 })
  end)

  it("index_select picks 1-based slices, repeats allowed", function()
    check(x:index_select(1, T.tensor { 2, 1, 2 }), { { 4, 5, 6 }, { 1, 2, 3 }, { 4, 5, 6 } }, { exact = true })
    check(x:index_select(2, T.tensor { 3 }), { { 3 }, { 6 } }, { exact = true })
    assert.matches("index 3", error_of(function() return x:index_select(1, T.tensor { 3 }) end))
  end)
end)

describe("tensor multinomial", function()
  it("draws 1-based category indices", function()
    T.manual_seed(3)
    check(T.multinomial(T.tensor { 0.0, 1.0, 0.0 }, 4, true), { 2, 2, 2, 2 }, { dtype = "int64", exact = true })
    check(T.tensor { { 0.0, 0.0, 1.0 }, { 1.0, 0.0, 0.0 } }:multinomial(1), { { 3 }, { 1 } }, { exact = true })
  end)

  it("without replacement draws each category once", function()
    T.manual_seed(5)
    local s = T.tensor { 1.0, 1.0, 1.0 }:multinomial(3):totable()
    table.sort(s)
    assert.same({ 1, 2, 3 }, s)
    assert.matches("without replacement", error_of(function() return T.tensor { 1.0, 1.0 }:multinomial(3) end))
  end)

  it("draws in proportion to the weights", function()
    T.manual_seed(11)
    local s = T.tensor { 1.0, 3.0 }:multinomial(20000, true)
    local twos = s:eq(2):sum():item()
    assert.is_true(math.abs(twos / 20000 - 0.75) < 0.02, "frequency " .. twos / 20000)
  end)
end)

-- ---- In place and copies ------------------------------------------------------------------

describe("tensor in-place ops and copies", function()
  it("add_/sub_/mul_/div_ update in place and return the tensor", function()
    local c = T.zeros(3)
    assert.equal(c, c:add_(T.ones(3)))
    c:mul_(3)
    check(c, { 3, 3, 3 })
    c:sub_(1)
    c:div_(T.tensor { 1.0, 2.0, 4.0 })
    check(c, { 2, 1, 0.5 })
    c:add_(T.ones(3), 2)
    check(c, { 4, 3, 2.5 })
  end)

  it("addcmul_ and addcdiv_ add value * a * b and value * a / b", function()
    local c = T.tensor { 1.0, 1.0 }
    c:addcmul_(T.tensor { 1.0, 2.0 }, T.tensor { 3.0, 4.0 }, 0.5)
    check(c, { 2.5, 5 })
    c:addcdiv_(T.tensor { 1.0, 2.0 }, T.tensor { 2.0, 4.0 })
    check(c, { 3, 5.5 })
  end)

  it("fill_, zero_ and copy_ (broadcasting the source)", function()
    check(T.zeros(2):fill_(3), { 3, 3 })
    check(T.ones(2):zero_(), { 0, 0 })
    check(T.zeros(2, 2):copy_(T.tensor { 1, 2 }), { { 1, 2 }, { 1, 2 } })
    check(T.zeros(2, { dtype = "int64" }):copy_(T.tensor { 1.9, -1.9 }), { 1, -1 }, { exact = true })
  end)

  it("an in-place float result into an integer tensor is an error", function()
    assert.matches("int64", error_of(function() T.tensor { 1 }:add_(0.5) end))
  end)

  it("clone is a copy; detach shares storage without grad", function()
    local a = T.tensor { 1.0, 2.0 }
    local c = a:clone()
    c[1] = 10
    assert.equal(1, a[1])
    local d = a:detach()
    d[1] = 10
    assert.equal(10, a[1])
  end)

  it("in place on a leaf that requires grad is an error while grad is enabled", function()
    local l = T.ones(2, { requires_grad = true })
    assert.matches("leaf", error_of(function() l:add_(1) end))
    assert.matches("leaf", error_of(function() l:fill_(0) end))
    assert.matches("leaf", error_of(function() l:copy_(T.zeros(2)) end))
    T.no_grad(function() l:add_(1) end)
    check(l, { 2, 2 })
  end)

  it("writing an element of a leaf that requires grad is an error too", function()
    -- The element is a view recorded in the graph: changing it in place is
    -- refused with a message saying why and what to do instead.
    local l = T.ones(3, { requires_grad = true })
    assert.matches("in place", error_of(function() l[1] = 5 end))
    assert.equal(1, l[1])
    local m = T.ones(2, 2, { requires_grad = true })
    assert.matches("in place", error_of(function() m[1][1] = 5 end))
    assert.equal(1, m[1][1])
    T.no_grad(function() m[1][1] = 5 end)
    assert.equal(5, m[1][1])
  end)

  it("uniform_ and normal_ on a leaf that requires grad are errors too", function()
    local l = T.ones(2, { requires_grad = true })
    assert.matches("leaf", error_of(function() l:uniform_() end))
    assert.matches("leaf", error_of(function() l:normal_() end))
    T.no_grad(function() l:uniform_(2, 3) end)
    assert.is_true(l[1] >= 2 and l[1] < 3)
  end)

  it("in place on a view of a leaf that requires grad is an error", function()
    local l = T.ones(3, { requires_grad = true })
    assert.has_error(function() l:view(-1):fill_(2) end)
    assert.has_error(function() l:narrow(1, 1, 2):mul_(2) end)
    check(l, { 1, 1, 1 })
  end)
end)

-- ---- Printing ------------------------------------------------------------------------

describe("tensor printing", function()
  it("prints like PyTorch", function()
    assert.equal("tensor([[1, 2],\n        [3, 4]])", tostring(T.tensor { { 1, 2 }, { 3, 4 } }))
    assert.equal("tensor([1.5000, 2.0000])", tostring(T.tensor { 1.5, 2 }))
    assert.equal("tensor([1., 2.], dtype=float64)", tostring(T.tensor({ 1, 2 }, { dtype = "float64" })))
    assert.equal("tensor(5)", tostring(T.tensor(5)))
    assert.equal("tensor([ True, False])", tostring(T.tensor { true, false }))
  end)

  it("prints requires_grad and grad_fn", function()
    local x = T.ones(2, { requires_grad = true })
    assert.equal("tensor([1., 1.], requires_grad=True)", tostring(x))
    assert.equal("tensor([2., 2.], grad_fn=<MulBackward0>)", tostring(x * 2))
  end)

  it("prints a non-contiguous view in logical order", function()
    assert.equal("tensor([[1, 3],\n        [2, 4]])", tostring(T.tensor { { 1, 2 }, { 3, 4 } }:t()))
  end)
end)

-- ---- Random numbers --------------------------------------------------------------------

describe("tensor random numbers", function()
  it("manual_seed makes rand and randn repeat", function()
    T.manual_seed(1)
    local a, an = T.rand(5), T.randn(5)
    T.manual_seed(1)
    local b, bn = T.rand(5), T.randn(5)
    assert.is_true(T.equal(a, b))
    assert.is_true(T.equal(an, bn))
    assert.equal(1, T.initial_seed())
    T.manual_seed(2)
    assert.is_false(T.equal(a, T.rand(5)))
  end)

  it("rand is uniform on [0, 1)", function()
    T.manual_seed(7)
    local u = T.rand(100000, { dtype = "float64" })
    assert.is_true(u:min():item() >= 0)
    assert.is_true(u:max():item() < 1)
    -- mean's std is sqrt(1/12 / n) ~ 0.0009; allow 5 sigma.
    assert.is_true(math.abs(u:mean():item() - 0.5) < 0.0046)
  end)

  it("randn has mean 0 and std 1 within statistical bounds", function()
    T.manual_seed(7)
    local n = T.randn(100000, { dtype = "float64" })
    -- mean's std is 1/sqrt(n) ~ 0.0032; std's std is ~ 1/sqrt(2n) ~ 0.0022.
    assert.is_true(math.abs(n:mean():item()) < 0.016, "mean " .. n:mean():item())
    assert.is_true(math.abs(n:std():item() - 1) < 0.011, "std " .. n:std():item())
    -- about 68.3% within one sigma
    local inside = n:abs():le(1):sum():item() / 100000
    assert.is_true(math.abs(inside - 0.6827) < 0.01, "within 1 sigma " .. inside)
  end)

  it("random fills refuse integer dtypes", function()
    assert.matches("float", error_of(function() return T.rand(2, { dtype = "int64" }) end))
  end)
end)

-- ---- Grad mode and threads ----------------------------------------------------------------

describe("tensor grad mode", function()
  it("no_grad returns fn's results and restores the mode", function()
    assert.is_true(T.is_grad_enabled())
    local a, b = T.no_grad(function(x)
      assert.is_false(T.is_grad_enabled())
      return x, 2
    end, 1)
    assert.equal(1, a)
    assert.equal(2, b)
    assert.is_true(T.is_grad_enabled())
  end)

  it("no_grad restores the mode when fn raises, and re-raises", function()
    local ok, err = pcall(T.no_grad, function() error("boom") end)
    assert.is_false(ok)
    assert.matches("boom", tostring(err))
    assert.is_true(T.is_grad_enabled())
  end)

  it("a task waiting inside no_grad does not turn grad off for the others", function()
    -- Every request and the script run as tasks on one thread; one waiting
    -- inside no_grad must not stop recording everywhere else.
    local ember = require "ember"
    local gate = ember.futures.Future()
    local inside
    local task = ember.spawn(function()
      T.no_grad(function()
        gate:wait()
        inside = T.is_grad_enabled()
      end)
      return T.is_grad_enabled()
    end)
    local while_waiting = T.is_grad_enabled()
    gate:set_result(true)
    assert.is_true(task:wait())
    assert.is_false(inside)
    assert.is_true(while_waiting, "grad mode was off while the no_grad task waited")
    assert.is_true(T.is_grad_enabled())
  end)

  it("nested no_grad/enable_grad restore their outer mode", function()
    T.no_grad(function()
      T.enable_grad(function() assert.is_true(T.is_grad_enabled()) end)
      assert.is_false(T.is_grad_enabled())
    end)
    assert.is_true(T.is_grad_enabled())
  end)
end)

describe("tensor threads", function()
  it("set_num_threads/get_num_threads round-trip and refuse 0", function()
    local before = T.get_num_threads()
    T.set_num_threads(2)
    assert.equal(2, T.get_num_threads())
    T.set_num_threads(1)
    assert.equal(1, T.get_num_threads())
    assert.matches("from 1 to 1024, not 0", error_of(T.set_num_threads, 0))
    T.set_num_threads(before)
  end)

  it("uses one BLAS thread unless EMBER_NUM_THREADS says otherwise", function()
    local EMBER = os.getenv("EMBER_BIN") or "build/bin/ember"
    local function threads(env)
      local script = os.tmpname() .. ".lua"
      local f = assert(io.open(script, "w"))
      f:write('print(require("ember").tensor.get_num_threads())')
      f:close()
      local pipe = assert(io.popen(("%s %s run %s 2>&1"):format(env, EMBER, script)))
      local out = pipe:read("a")
      pipe:close()
      os.remove(script)
      return out
    end
    assert.equal("1\n", threads("env -u EMBER_NUM_THREADS"))
    assert.equal("3\n", threads("env EMBER_NUM_THREADS=3"))
    local bad = threads("env EMBER_NUM_THREADS=lots")
    assert.matches("EMBER_NUM_THREADS must be a positive integer, not 'lots'", bad)
    assert.matches("\n1\n$", bad)
  end)

  it("matmul gives the same result with several threads", function()
    T.manual_seed(4)
    local a, b = T.randn(64, 64, { dtype = "float64" }), T.randn(64, 64, { dtype = "float64" })
    local one = a:matmul(b)
    T.set_num_threads(4)
    local four = a:matmul(b)
    T.set_num_threads(1)
    assert.is_true(T.allclose(one, four, 1e-12, 1e-12))
  end)
end)

-- ---- Hostile and edge inputs ------------------------------------------------------
-- Each of these once read or wrote outside a tensor's memory, leaked, or
-- gave a silently wrong answer.

describe("tensor robustness", function()
  it("refuses a narrow whose length overflows", function()
    assert.matches("out of range", error_of(function()
      return T.zeros(4):narrow(1, 2, math.maxinteger)
    end))
  end)

  it("refuses a view whose sizes multiply past 64 bits", function()
    assert.matches("too large", error_of(function()
      return T.tensor(1.0):view(7, 7905747460161236407)
    end))
  end)

  it("refuses a shape table with a negative length", function()
    local weird = setmetatable({}, { __len = function() return -1 end })
    assert.matches("0 to 8 sizes", error_of(function() return T.zeros(2):view(weird) end))
  end)

  it("keeps cat's elements alive when the list makes them on the fly", function()
    local proxy = setmetatable({}, {
      __len = function() return 3 end,
      __index = function(_, i) collectgarbage() return T.full({ 1 }, i) end,
    })
    check(T.cat(proxy), { 1, 2, 3 })
  end)

  it("fills a nested table by what it measured, not what __len says later", function()
    local calls = 0
    local row = setmetatable({ 1, 2 }, { __len = function()
      calls = calls + 1
      return calls == 1 and 2 or 1000
    end })
    check(T.tensor({ row, { 3, 4 } }), { { 1, 2 }, { 3, 4 } }, { exact = true })
  end)

  it("rejects index 0 and negative indices in index_select", function()
    local m = T.tensor { { 1, 2 }, { 3, 4 }, { 5, 6 } }
    assert.matches("out of range", error_of(function() return m:index_select(1, T.tensor { 0 }) end))
    assert.matches("out of range", error_of(function() return m:index_select(1, T.tensor { -1 }) end))
  end)

  it("multiplies broadcast (stride 0) operands through BLAS correctly", function()
    local a = T.ones(1, 3):expand(4, 3)
    local b = T.tensor { { 1.0, 2.0 }, { 3.0, 4.0 }, { 5.0, 6.0 } }
    check(T.mm(a, b), { { 9, 12 }, { 9, 12 }, { 9, 12 }, { 9, 12 } })
    check(T.mm(b:t(), T.ones(3, 1):expand(3, 2)), { { 9, 9 }, { 12, 12 } })
  end)

  it("reads a source that overlaps the destination before writing", function()
    local x = T.tensor { { 1.0, 2.0 }, { 3.0, 4.0 } }
    x:add_(x:t())
    check(x, { { 2, 5 }, { 5, 8 } })
    local y = T.tensor { 1.0, 2.0, 3.0 }
    y:narrow(1, 2, 2):copy_(y:narrow(1, 1, 2))
    check(y, { 1, 1, 2 })
  end)

  it("refuses to write through an expanded view", function()
    assert.matches("expanded", error_of(function()
      return T.zeros(1):expand(4):add_(T.ones(4))
    end))
  end)

  it("keeps bool tensors boolean under add_ and mul_", function()
    local m = T.tensor { true, false }
    m:add_(m)
    assert.same({ true, false }, m:totable())
    assert.equal(1, m:sum():item())
  end)

  it("draws without replacement even when some weights are tiny", function()
    local draw = T.tensor { 1.0, 1e-20, 1e-20 }:multinomial(2)
    assert.equal(1, draw[1])
    assert.is_true(draw[2] == 2 or draw[2] == 3)
  end)

  it("multiplies an empty batch", function()
    assert.same({ 0, 2, 4 }, T.ones(0, 2, 3):matmul(T.ones(3, 4)):size())
  end)

  it("stores an assigned .grad detached and checks its shape and dtype", function()
    local p = T.ones(2, { requires_grad = true })
    p.grad = p * 2
    assert.is_nil(p.grad.grad_fn)
    check(p.grad, { 2, 2 })
    assert.matches("shape and dtype", error_of(function() p.grad = T.ones(3) end))
  end)

  it("refuses split sizes and chunk counts below 1", function()
    assert.matches("size must be", error_of(function() return T.ones(3):split(0) end))
    assert.matches("chunks must be", error_of(function() return T.ones(3):chunk(0) end))
  end)

  it("raises for bad arguments after making temporaries, without leaking them", function()
    -- Under AddressSanitizer a leak here fails the run.
    local x = T.zeros(3, 3)
    assert.has_error(function() return T.scatter(x, 1, T.tensor { { 1.5 } }, 2.0) end)
    assert.has_error(function() return T.where(x:gt(0), x, "nope") end)
    assert.has_error(function() x:add_(1.5, "nope") end)
    assert.has_error(function() x[1] = "nope" end)
    collectgarbage()
  end)

  it("refuses a dimension far out of range instead of wrapping it", function()
    assert.matches("out of range", error_of(function() return T.ones(2, 2):sum(4294967297) end))
  end)
end)
