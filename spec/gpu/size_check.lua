-- Tensors larger than the others use: over 1 MiB, where a device's
-- allocator and kernels take other paths (separate pools, several blocks of
-- threads, several pages of the simulation's guarded memory). Last in the
-- run (files run in name order), so that a crash here leaves the other
-- results printed.
local T = require("ember").tensor

local checks = {}
local function check(name, fn) checks[#checks + 1] = { name, fn } end

-- Just over 1 MiB of float32, and 4 MiB and a bit.
local SIZES = { (1 << 18) + 1, (1 << 20) + 3 }

local function near(g, got, want, tol, what)
  g:is(math.abs(got - want) <= tol, "%s: %.6g, expected %.6g +- %g", what, got,
    want, tol)
end

check("filled tensors over 1 MiB", function(g)
  for _, n in ipairs(SIZES) do
    local z = T.zeros(n, { device = g.device })
    g:eq(z:device(), g.device_name, "zeros device")
    g:eq(z:sum():item(), 0.0, ("zeros(%d):sum()"):format(n))
    g:eq(T.ones(n, { device = g.device }):sum():item(), n + 0.0,
      ("ones(%d):sum()"):format(n))
    g:eq(T.full({ n }, 2, { device = g.device }):sum():item(), 2 * n,
      ("full(%d, 2):sum()"):format(n))
    g:eq(T.arange(n, { device = g.device }):sum():item(), n * (n - 1) // 2,
      ("arange(%d):sum()"):format(n))
  end
end)

check("rand, randn, uniform_, normal_ over 1 MiB", function(g)
  for _, n in ipairs(SIZES) do
    local u = T.rand(n, { device = g.device })
    g:eq(u:device(), g.device_name, "rand device")
    near(g, u:mean():item(), 0.5, 0.005, ("rand(%d) mean"):format(n))
    g:is(u:min():item() >= 0 and u:max():item() < 1, "rand(%d) outside [0, 1)",
      n)
    local r = T.randn(n, { device = g.device, dtype = "float64" })
    near(g, r:mean():item(), 0, 0.01, ("randn(%d) mean"):format(n))
    near(g, r:std():item(), 1, 0.01, ("randn(%d) std"):format(n))
    local e = T.empty(n, { device = g.device })
    near(g, e:uniform_(-1, 1):mean():item(), 0, 0.01,
      ("uniform_ of %d mean"):format(n))
    near(g, e:normal_(2, 3):mean():item(), 2, 0.03,
      ("normal_ of %d mean"):format(n))
  end
  local x = T.ones(SIZES[2], { device = g.device })
  near(g, T.dropout(x, 0.5, true):eq(0):sum():item() / SIZES[2], 0.5, 0.005,
    "dropout of 4 MiB: fraction zeroed")
end)

check("copies and elementwise ops over 1 MiB", function(g)
  local x = T.randn(1030, 1030)
  local d = x:to(g.device)
  g:close(d, x, { what = "4 MiB to the device and back" })
  g:close(d:t():contiguous(), x:t():contiguous(),
    { what = "contiguous transpose" })
  g:same(function(a) return a * 2 + 1, a:exp(), a:gt(0) end, { x },
    { what = "elementwise" })
  g:same(function(a) return a:sum(1), a:max(2), a:softmax(2) end, { x },
    { what = "reductions", loose = true, rtol = 1e-3, atol = 1e-3 })
  local z = T.zeros(1030, 1030, { dtype = "float64", device = g.device })
  z:copy_(d)
  g:close(z, x:to("float64"), { what = "copy_ with a dtype change" })
end)

check("matrix products with operands over 1 MiB", function(g)
  local a, b = T.randn(300, 1000), T.randn(1000, 280)
  g:same(function(x, y) return x:matmul(y), x:matmul(y:t():contiguous():t())
  end, { a, b }, { what = "(300,1000) @ (1000,280)", rtol = 1e-4,
    atol = 1e-3 })
  g:same(function(x, y) return x:matmul(y) end,
    { T.randn(3, 200, 600), T.randn(600, 300) },
    { what = "batched", rtol = 1e-4, atol = 1e-3 })
end)

return checks
