-- Reductions and softmax on the device against the CPU: sum, mean, prod,
-- max/min with their indices, argmax/argmin, over each dim and over all,
-- with and without keepdim; var/std/norm; softmax and log_softmax over each
-- dim; a reduction large enough to need more than one block of threads.
local T = require("ember").tensor

local checks = {}
local function check(name, fn) checks[#checks + 1] = { name, fn } end

local DIMS = { 1, 2, 3, -1 }

for _, dtype in ipairs({ "float32", "float64" }) do
  check("sum, mean, prod over all and each dim, " .. dtype, function(g)
    local x = T.randn(3, 4, 5, { dtype = dtype })
    local o = { loose = true }
    o.what = "all"
    g:same(function(a) return a:sum(), a:mean() end, { x }, o)
    for _, d in ipairs(DIMS) do
      o.what = "dim " .. d
      g:same(function(a)
        return a:sum(d), a:sum(d, true), a:mean(d), a:mean(d, true)
      end, { x }, o)
    end
    -- Products of values near 1 stay in range.
    local p = T.rand(3, 4, 5, { dtype = dtype }) + 0.5
    o.what = "prod"
    g:same(function(a) return a:prod(), a:prod(1), a:prod(2, true), a:prod(-1)
    end, { p }, o)
  end)

  check("max, min with indices, argmax, argmin, " .. dtype, function(g)
    local x = g.distinct({ 3, 4, 5 }, dtype)
    g:same(function(a) return a:max(), a:min(), a:argmax(), a:argmin() end,
      { x }, { what = "all" })
    for _, d in ipairs(DIMS) do
      g:same(function(a)
        local mv, mi = a:max(d)
        local kv, ki = a:max(d, true)
        local nv, ni = a:min(d)
        return mv, mi, kv, ki, nv, ni, a:argmax(d), a:argmin(d, true)
      end, { x }, { what = "dim " .. d })
    end
  end)
end

check("reductions of integer and bool tensors, exact", function(g)
  local x = g.distinct({ 4, 6 }, "int64")
  g:same(function(a)
    local mv, mi = a:max(2)
    local nv, ni = a:min(1, true)
    return a:sum(), a:sum(1), a:sum(2, true), a:max(), a:min(), mv, mi, nv, ni,
      a:argmax(), a:argmin(2)
  end, { x }, { what = "int64" })
  g:same(function(a) return a:prod(1) end,
    { T.tensor({ { 1, -2, 3 }, { 4, 5, -6 } }) }, { what = "int64 prod" })
  g:same(function(a) return a:sum(), a:sum(1) end, { x:to("int32") },
    { what = "int32" })
  g:same(function(a) return a:gt(0):sum(), a:gt(0):sum(2) end,
    { T.randn(5, 7) }, { what = "bool sums (counting)" })
end)

check("reductions of non-contiguous views", function(g)
  local x = g.distinct({ 3, 4, 5 })
  g:same(function(a)
    local p = a:permute(3, 1, 2)
    local v, i = p:max(2)
    return p:sum(2), p:mean(3, true), v, i, a:transpose(1, 3):argmin(1)
  end, { x }, { what = "permuted", loose = true })
  g:same(function(a)
    local n = a:narrow(3, 2, 3)
    return n:sum(), n:sum(1), n:max(3)
  end, { x }, { what = "narrowed", loose = true })
  g:same(function(a) return a:expand(4, 6):sum(1) end, { T.randn(6) },
    { what = "expanded", loose = true })
end)

check("var, std and norm", function(g)
  for _, dtype in ipairs({ "float32", "float64" }) do
    local x = T.randn(6, 7, { dtype = dtype })
    g:same(function(a)
      return a:var(), a:std(), a:var(1), a:std(2, { keepdim = true }),
        a:var(2, { unbiased = false }), a:norm(), a:norm(1)
    end, { x }, { what = dtype, loose = true })
  end
end)

check("a large reduction: 1000 x 100", function(g)
  local x = T.rand(1000, 100)
  -- float32 sums of 10^5 elements in two different orders: a looser bound.
  g:same(function(a) return a:sum(), a:mean(), a:sum(1), a:sum(2) end, { x },
    { what = "float32 sum", rtol = 1e-3, atol = 1e-3 })
  g:same(function(a) return a:max(), a:argmax(), a:max(1) end, { x },
    { what = "float32 max" })
  g:same(function(a) return a:sum(), a:sum(1) end,
    { x:to("float64") }, { what = "float64 sum", loose = true })
  g:same(function(a) return a:sum() end,
    { T.arange(100000) }, { what = "int64 sum" })
end)

for _, dtype in ipairs({ "float32", "float64" }) do
  check("softmax and log_softmax over each dim, " .. dtype, function(g)
    local x = T.randn(3, 4, 5, { dtype = dtype }) * 3
    for _, d in ipairs(DIMS) do
      g:same(function(a) return a:softmax(d), a:log_softmax(d) end, { x },
        { what = "dim " .. d, loose = true })
    end
    g:same(function(a) return T.softmax(a, 2), T.log_softmax(a:t(), 1) end,
      { T.randn(4, 6, { dtype = dtype }) }, { what = "2-D and transposed",
        loose = true })
    -- Large logits: the max must be subtracted first.
    g:same(function(a) return a:softmax(1), a:log_softmax(1) end,
      { T.tensor({ 1000, 999, -1000 }, { dtype = dtype }) },
      { what = "large logits", loose = true })
  end)
end

return checks
