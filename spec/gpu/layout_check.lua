-- Moving and indexing data on the device against the CPU: cat, stack,
-- narrow, select, index_select, gather, scatter, scatter_add, copies
-- between devices and dtypes, contiguous copies of permuted and expanded
-- views, and (with two devices) copies from one device to the other.
local T = require("ember").tensor

local checks = {}
local function check(name, fn) checks[#checks + 1] = { name, fn } end

check("cat and stack over each dim", function(g)
  local a, b, c = T.randn(2, 3, 4), T.randn(2, 3, 4), T.randn(2, 3, 4)
  for _, d in ipairs({ 1, 2, 3, -1 }) do
    g:same(function(x, y, z) return T.cat({ x, y, z }, d) end, { a, b, c },
      { what = "cat dim " .. d })
  end
  for _, d in ipairs({ 1, 2, 3, 4, -1 }) do
    g:same(function(x, y, z) return T.stack({ x, y, z }, d) end, { a, b, c },
      { what = "stack dim " .. d })
  end
  g:same(function(x, y) return T.cat({ x, y }, 2) end,
    { T.randn(3, 2), T.randn(3, 5) }, { what = "cat of different widths" })
  g:same(function(x, y) return T.cat({ x:t(), y:narrow(1, 2, 2) }) end,
    { T.randn(4, 3), T.randn(5, 4) }, { what = "cat of views" })
  g:same(function(x, y) return T.cat({ x, y }), T.stack({ x, y }) end,
    { T.tensor({ 1, 2 }), T.tensor({ 3, 4 }) }, { what = "int64" })
  -- An episode's worth of 0-dim log-probabilities, as the REINFORCE agent
  -- stacks them.
  local steps = {}
  for i = 1, 200 do steps[i] = T.randn({}) end
  g:same(function(...) return T.stack({ ... }), T.cat({ T.stack({ ... }) })
  end, steps, { what = "stack of 200 scalars" })
end)

check("narrow, select, unbind and chunk views", function(g)
  local x = T.randn(4, 5, 6)
  g:same(function(a)
    return a:narrow(1, 2, 2), a:narrow(3, 4, 3), a:select(2, 5),
      a:select(-1, 1), a[3], a[2][4]
  end, { x }, { what = "views" })
  g:same(function(a) return a:chunk(3, 3), a:split(2, 1), a:unbind(2) end,
    { x }, { what = "chunk, split, unbind" })
  g:same(function(a)
    return a:view(20, 6), a:reshape(-1), a:unsqueeze(2):squeeze(2),
      a:flatten(2), a:view(2, 2, 30):transpose(1, 3)
  end, { x }, { what = "view, reshape, unsqueeze, flatten" })
end)

check("index_select, gather, scatter, scatter_add", function(g)
  local x = T.randn(4, 5)
  g:same(function(a, i) return a:index_select(1, i), a:index_select(2, i) end,
    { x, T.tensor({ 2, 1, 4, 2 }) }, { what = "index_select with repeats" })
  g:same(function(a, i) return a:index_select(2, i) end,
    { x, T.tensor({ 5, 1 }, { dtype = "int32" }) },
    { what = "index_select, int32 indices" })
  g:same(function(a, i) return a:gather(2, i) end,
    { x, T.tensor({ { 5, 1 }, { 2, 2 }, { 3, 4 }, { 1, 5 } }) },
    { what = "gather dim 2" })
  g:same(function(a, i) return a:gather(1, i), a:gather(-2, i) end,
    { x, T.tensor({ { 4, 1, 2, 3, 1 }, { 1, 1, 1, 1, 4 } }) },
    { what = "gather dim 1" })
  g:same(function(a, i) return a:t():gather(2, i) end,
    { x, T.tensor({ { 4 }, { 1 }, { 2 }, { 3 }, { 2 } }) },
    { what = "gather from a transposed view" })
  local z = T.zeros(3, 5)
  g:same(function(a, i, s) return a:scatter(2, i, s), a:scatter(2, i, 2.5) end,
    { z, T.tensor({ { 5, 1 }, { 3, 2 }, { 4, 4 } }), T.randn(3, 2) },
    { what = "scatter dim 2" })
  g:same(function(a, i, s) return a:scatter(1, i, s) end,
    { z, T.tensor({ { 3, 1, 2, 1, 3 } }), T.randn(1, 5) },
    { what = "scatter dim 1" })
  g:same(function(a, i, s) return a:scatter_add(2, i, s) end,
    { z, T.tensor({ { 1, 1, 1 }, { 2, 5, 2 }, { 3, 3, 4 } }), T.randn(3, 3) },
    { what = "scatter_add with repeated indices", loose = true })
  g:same(function(a, i, s) return a:scatter_add(1, i, s) end,
    { T.zeros(4), T.tensor({ 1, 1, 4, 1, 4 }),
      T.tensor({ 1.0, 2.0, 3.0, 4.0, 5.0 }) },
    { what = "scatter_add 1-D" })
  g:same(function(a, i) return a:index_fill(2, i, -1) end,
    { x, T.tensor({ 2, 4 }) }, { what = "index_fill" })
  local w = T.randn(10, 3, { dtype = "float64" })
  g:same(function(a, i) return a:index_select(1, i) end,
    { w, T.tensor({ 10, 1, 1, 7 }) }, { what = "float64 embedding rows" })
end)

check("contiguous copies of permuted, transposed and expanded views",
  function(g)
    local x = T.randn(2, 3, 4, 5)
    g:same(function(a)
      local p = a:permute(4, 2, 1, 3):contiguous()
      return p, p:is_contiguous(), p:stride()
    end, { x }, { what = "permute(4, 2, 1, 3)" })
    g:same(function(a)
      local v = a:transpose(2, 4)
      return v:is_contiguous(), v:contiguous(), v:reshape(2, -1), v:clone()
    end, { x }, { what = "transpose(2, 4)" })
    g:same(function(a) return a:expand(3, 4, 5):contiguous() end,
      { T.randn(4, 1) }, { what = "expand" })
    g:same(function(a)
      return a:narrow(4, 2, 3):select(1, 2):select(2, 3):t():contiguous()
    end, { x }, { what = "narrow, select, t" })
    g:same(function(a) return a:permute(2, 1):contiguous() end,
      { T.tensor({ { 1, 2, 3 }, { 4, 5, 6 } }) }, { what = "int64" })
    g:same(function(a) return a:t():contiguous() end,
      { T.tensor({ { true, false }, { false, false } }) }, { what = "bool" })
  end)

check("dtype conversions on the device", function(g)
  local f = T.tensor({ { 1.7, -2.7, 0 }, { 3.5, -0.2, 255 } })
  g:same(function(a)
    return a:to("float64"), a:to("int64"), a:to("int32"), a:abs():to("uint8"),
      a:to("bool"), a:double():float(), a:long(), a:type("float64")
  end, { f }, { what = "from float32" })
  g:same(function(a) return a:to("float32"), a:to("float64"), a:to("bool") end,
    { T.tensor({ -3, 0, 9 }) }, { what = "from int64" })
  g:same(function(a) return a:to("float32"), a:to("int64") end,
    { T.tensor({ true, false }) }, { what = "from bool" })
  g:same(function(a) return a:t():to("float64") end, { T.randn(3, 4) },
    { what = "of a transposed view" })
end)

-- copy_ between the CPU and the device, across dtypes and into views.
check("copy_ between devices and dtypes", function(g)
  local dev = g.device
  local src = T.randn(3, 4)
  local d = T.zeros(3, 4, { device = dev })
  d:copy_(src)
  g:close(d, src, { what = "cpu -> device", device = g.device_name })
  local back = T.zeros(3, 4)
  back:copy_(d)
  g:close(back, src, { what = "device -> cpu", device = "cpu" })
  local d64 = T.zeros(3, 4, { device = dev, dtype = "float64" })
  d64:copy_(src)
  g:close(d64, src:to("float64"), { what = "cpu float32 -> device float64" })
  local di = T.zeros(3, 4, { device = dev, dtype = "int64" })
  di:copy_(d * 10)
  g:close(di, (src * 10):to("int64"), { what = "device float32 -> int64" })
  local cpu64 = T.zeros(4, 3, { dtype = "float64" })
  cpu64:copy_(d:t())
  g:close(cpu64, src:t():to("float64"),
    { what = "device transposed view -> cpu float64" })
  -- Into a view of a device tensor: only the view's elements change.
  local base = T.zeros(4, 6, { device = dev })
  base:narrow(2, 2, 3):copy_(T.ones(4, 3))
  base:select(1, 4):copy_(T.arange(6):to("float32"))
  local want = T.zeros(4, 6)
  want:narrow(2, 2, 3):copy_(T.ones(4, 3))
  want:select(1, 4):copy_(T.arange(6):to("float32"))
  g:close(base, want, { what = "into device views" })
  -- Broadcast source, and a number.
  local row = T.zeros(3, 4, { device = dev })
  row:copy_(T.tensor({ 1.0, 2.0, 3.0, 4.0 }))
  g:close(row, T.tensor({ 1.0, 2.0, 3.0, 4.0 }):expand(3, 4):contiguous(),
    { what = "broadcast cpu source" })
  local from_dev = T.zeros(2, 4, { device = dev })
  from_dev:copy_(d:narrow(1, 2, 2))
  g:close(from_dev, src:narrow(1, 2, 2):contiguous(),
    { what = "device view -> device" })
end)

check("to(), cuda() and cpu() move values and keep dtypes", function(g)
  g:need_cuda()
  local x = T.randn(3, 4, { dtype = "float64" })
  local d = x:to("cuda")
  g:eq(d:device(), "cuda:0", "x:to('cuda'):device()")
  g:eq(d:dtype(), "float64", "dtype after to('cuda')")
  g:close(d, x, { what = "to('cuda')" })
  g:eq(x:cuda():device(), "cuda:0", "x:cuda():device()")
  g:eq(x:to("cuda:0"):device(), "cuda:0", "x:to('cuda:0'):device()")
  local both = x:to({ device = "cuda", dtype = "float32" })
  g:eq(both:device(), "cuda:0", "to({device=, dtype=}):device()")
  g:close(both, x:to("float32"), { what = "to({device=, dtype=})" })
  local back = d:cpu()
  g:eq(back:device(), "cpu", "cpu():device()")
  g:close(back, x, { what = "cpu()" })
  g:eq(back:to("cpu"):device(), "cpu", "to('cpu') of a cpu tensor")
  g:eq(d:to("cuda"):device(), "cuda:0", "to('cuda') of a cuda tensor")
  local v = x:t():to("cuda")
  g:close(v, x:t(), { what = "to('cuda') of a transposed view" })
  g:close(x:narrow(2, 2, 2):cuda():cpu(), x:narrow(2, 2, 2),
    { what = "narrowed view there and back" })
  g:close(T.tensor(true):cuda():cpu(), T.tensor(true), { what = "bool 0-dim" })
end)

check("two devices: copies between cuda:0 and cuda:1", function(g)
  g:need_devices(2)
  local x = T.randn(3, 5)
  local d0 = x:to("cuda:0")
  local d1 = d0:to("cuda:1")
  g:eq(d1:device(), "cuda:1", "to('cuda:1'):device()")
  g:close(d1, x, { what = "cuda:0 -> cuda:1" })
  g:close(d1:t():to("cuda:0"), x:t(), { what = "cuda:1 view -> cuda:0" })
  g:eq(x:cuda(1):device(), "cuda:1", "x:cuda(1):device()")
  local z = T.zeros(3, 5, { device = "cuda:1", dtype = "float64" })
  z:copy_(d0)
  g:close(z, x:to("float64"),
    { what = "copy_ cuda:0 float32 -> cuda:1 float64" })
  local y = d1 * 2 + 1
  g:eq(y:device(), "cuda:1", "an op on cuda:1 stays there")
  g:close(y, x * 2 + 1, { what = "arithmetic on cuda:1" })
  g:close(T.ones(2, { device = "cuda:1" }), T.ones(2),
    { what = "ones on cuda:1" })
  g:close(d1:matmul(d1:t()), x:matmul(x:t()), { what = "matmul on cuda:1",
    loose = true })
  g:raises(function() return d0 + d1 end, "cuda:0", "cuda:1")
end)

return checks
