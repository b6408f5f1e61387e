-- Matrix products on the device (cuBLAS on a GPU) against the CPU's
-- (OpenBLAS): 2-D with either operand transposed, the 1-D cases, batched
-- 3-D products with and without a broadcast batch, addmm with beta and
-- alpha, and a size large enough to need several tiles.
local T = require("ember").tensor

local checks = {}
local function check(name, fn) checks[#checks + 1] = { name, fn } end

local LOOSE = { loose = true }

local function with(what)
  return { loose = true, what = what }
end

for _, dtype in ipairs({ "float32", "float64" }) do
  local o = { dtype = dtype }

  check("2-D products with transposed operands, " .. dtype, function(g)
    local a, b = T.randn(5, 7, o), T.randn(7, 3, o)
    local at, bt = T.randn(7, 5, o), T.randn(3, 7, o)
    g:same(function(x, y) return x:matmul(y), T.mm(x, y) end, { a, b },
      with("a @ b"))
    g:same(function(x, y) return x:t():matmul(y) end, { at, b },
      with("a^T @ b"))
    g:same(function(x, y) return x:matmul(y:t()) end, { a, bt },
      with("a @ b^T"))
    g:same(function(x, y) return x:t():matmul(y:t()) end, { at, bt },
      with("a^T @ b^T"))
    -- Views with a leading stride larger than their width.
    local wide = T.randn(6, 10, o)
    g:same(function(x) return x:narrow(2, 2, 5):matmul(x:narrow(1, 1, 5)) end,
      { wide }, with("narrowed operands"))
    g:same(function(x, y) return x:matmul(y) end,
      { T.randn(1, 7, o), T.randn(7, 1, o) }, with("1 x 7 @ 7 x 1"))
  end)

  check("1-D products, " .. dtype, function(g)
    local v, w = T.randn(7, o), T.randn(7, o)
    local m = T.randn(5, 7, o)
    g:same(function(x, y) return x:matmul(y), T.dot(x, y) end, { v, w },
      with("dot"))
    g:same(function(x, y) return x:matmul(y), T.mv(x, y) end, { m, v },
      with("matrix @ vector"))
    g:same(function(x, y) return x:matmul(y), x:matmul(y:narrow(2, 2, 4)) end,
      { T.randn(5, o), m }, with("vector @ matrix"))
    g:same(function(x, y) return x:matmul(y) end,
      { T.randn(3, 5, 7, o), v }, with("batch @ vector"))
    g:same(function(x, y) return x:matmul(y) end,
      { v, T.randn(3, 7, 4, o) }, with("vector @ batch"))
  end)

  check("batched products, " .. dtype, function(g)
    local a, b = T.randn(4, 5, 7, o), T.randn(4, 7, 3, o)
    g:same(function(x, y) return x:matmul(y) end, { a, b },
      with("(4,5,7) @ (4,7,3)"))
    g:same(function(x, y) return x:transpose(2, 3):matmul(y) end,
      { T.randn(4, 7, 5, o), b }, with("transposed batch operand"))
    g:same(function(x, y) return x:matmul(y:transpose(2, 3)) end,
      { a, T.randn(4, 3, 7, o) }, with("transposed batch operand, right"))
    g:same(function(x, y) return x:matmul(y) end,
      { a, T.randn(7, 3, o) }, with("batch @ matrix (broadcast)"))
    g:same(function(x, y) return x:matmul(y) end,
      { T.randn(5, 7, o), b }, with("matrix @ batch (broadcast)"))
    g:same(function(x, y) return x:matmul(y) end,
      { T.randn(2, 1, 5, 7, o), T.randn(3, 7, 4, o) },
      with("(2,1,5,7) @ (3,7,4): broadcast batch dims"))
    g:same(function(x, y) return x:matmul(y) end,
      { T.randn(1, 5, 7, o), T.randn(4, 7, 3, o) }, with("batch of 1 @ batch"))
    g:same(function(x, y) return x:permute(2, 1, 3):matmul(y) end,
      { T.randn(5, 4, 7, o), b }, with("permuted batch"))
  end)

  check("addmm with bias, beta and alpha, " .. dtype, function(g)
    local a, b = T.randn(5, 7, o), T.randn(7, 3, o)
    g:same(function(bias, x, y) return T.addmm(bias, x, y) end,
      { T.randn(3, o), a, b }, with("row bias"))
    g:same(function(bias, x, y)
      return T.addmm(bias, x, y, { beta = 0.5, alpha = 2 }),
        bias:addmm(x, y, { beta = 0, alpha = -1 })
    end, { T.randn(5, 3, o), a, b }, with("full bias, beta and alpha"))
    g:same(function(bias, x, y) return T.addmm(bias, x:t(), y:t()) end,
      { T.randn(1, 3, o), T.randn(7, 5, o), T.randn(3, 7, o) },
      with("transposed operands"))
    g:same(function(bias, x, y) return T.addmm(bias:t(), x, y) end,
      { T.randn(3, 5, o), a, b }, with("transposed bias"))
  end)
end

check("a product that needs several tiles: (96,160) @ (160,130)", function(g)
  local a, b = T.randn(96, 160), T.randn(160, 130)
  g:same(function(x, y) return x:matmul(y), x:t():t():matmul(y) end, { a, b },
    LOOSE)
  g:same(function(x, y) return x:matmul(y) end,
    { a:to("float64"), b:to("float64") }, LOOSE)
  g:same(function(x, y, bias) return T.addmm(bias, y:t(), x:t()) end,
    { a, b, T.randn(96) }, with("addmm, transposed"))
end)

check("integer products, exact", function(g)
  g:same(function(x, y) return x:matmul(y) end,
    { T.tensor({ { 1, 2, 3 }, { 4, 5, 6 } }), T.tensor({ { 1, -1 }, { 2, 0 },
      { -3, 7 } }) }, { what = "int64" })
end)

return checks
