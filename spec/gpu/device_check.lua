-- The device itself: what ember.tensor.cuda reports, creating tensors on
-- the device, reading them back (item, totable, tostring, indexing), the
-- errors for mixed devices and unknown devices, modules moving between
-- devices, and the caching allocator.
local ember = require "ember"
local T = ember.tensor

local checks = {}
local function check(name, fn) checks[#checks + 1] = { name, fn } end

check("ember.tensor.cuda reports the devices", function(g)
  g:need_cuda()
  local cuda = T.cuda
  g:eq(cuda.is_available(), true, "is_available()")
  local n = cuda.device_count()
  g:is(math.type(n) == "integer" and n >= 1, "device_count() = %s", tostring(n))
  g:eq(ember.cuda.device_count(), n, "ember.cuda.device_count()")
  for i = 0, n - 1 do
    local name = cuda.get_device_name(i)
    g:is(type(name) == "string" and #name > 0, "get_device_name(%d) = %s", i,
      tostring(name))
  end
  g:eq(cuda.get_device_name(), cuda.get_device_name(0), "get_device_name()")
  local sim = tonumber(os.getenv("EMBER_CUDA_SIM") or "0") or 0
  g:eq(cuda.is_simulated(), sim > 0, "is_simulated() with EMBER_CUDA_SIM=" ..
    tostring(os.getenv("EMBER_CUDA_SIM")))
  if sim > 0 then g:eq(n, sim, "device_count() with EMBER_CUDA_SIM") end
  cuda.synchronize()
  local stats = cuda.memory_stats()
  for _, k in ipairs({ "allocated_bytes", "cached_bytes", "peak_bytes",
    "raw_allocs", "reuses" }) do
    g:is(math.type(stats[k]) == "integer" and stats[k] >= 0,
      "memory_stats().%s = %s", k, tostring(stats[k]))
  end
  g:is(stats.peak_bytes >= stats.allocated_bytes,
    "peak_bytes < allocated_bytes")
  g:eq(type(cuda.memory_stats(0)), "table", "type of memory_stats(0)")
end)

-- Each creation function with {device=} lands on the device with the
-- values it has on the CPU.
check("creation functions with {device=}", function(g)
  local d = g.device
  local function both(what, make)
    local cpu = make({ device = "cpu" })
    local dev = make({ device = d })
    g:close(dev, cpu, { what = what, device = g.device_name })
  end
  both("zeros", function(o) return T.zeros(2, 3, o) end)
  both("zeros table shape", function(o) return T.zeros({ 2, 3 }, o) end)
  both("ones int64", function(o)
    o.dtype = "int64"
    return T.ones(4, o)
  end)
  both("full", function(o) return T.full({ 2, 2 }, 7.5, o) end)
  both("full bool", function(o)
    o.dtype = "bool"
    return T.full({ 3 }, true, o)
  end)
  both("tensor", function(o) return T.tensor({ { 1.5, 2 }, { 3, 4 } }, o) end)
  both("tensor float64", function(o)
    o.dtype = "float64"
    return T.tensor({ 1, 2, 3 }, o)
  end)
  both("tensor of a number", function(o) return T.tensor(2.5, o) end)
  both("tensor of bools", function(o) return T.tensor({ true, false }, o) end)
  both("arange", function(o) return T.arange(5, o) end)
  both("arange float step", function(o) return T.arange(1, 3, 0.5, o) end)
  both("eye", function(o) return T.eye(3, o) end)
  both("zeros 0-dim", function(o) return T.zeros({}, o) end)
  both("zeros with no elements", function(o) return T.zeros(0, 3, o) end)
  for _, name in ipairs({ "empty", "rand", "randn" }) do
    local t = T[name](3, 4, { device = d, dtype = "float64" })
    g:eq(t:device(), g.device_name, name .. " device")
    g:eq(t:size(), { 3, 4 }, name .. " shape")
    g:eq(t:dtype(), "float64", name .. " dtype")
  end
  local leaf = T.zeros(3, { device = d, requires_grad = true })
  g:is(leaf.requires_grad and leaf.is_leaf, "zeros{requires_grad=} on %s",
    g.device_name)
  g:eq(T.zeros(2, { device = g.device_name }):device(), g.device_name,
    "device given as " .. g.device_name)
end)

check("*_like functions keep the device", function(g)
  local x = T.randn(2, 3, { dtype = "float64" }):to(g.device)
  for _, name in ipairs({ "zeros_like", "ones_like", "empty_like", "rand_like",
    "randn_like" }) do
    local t = T[name](x)
    g:eq(t:device(), g.device_name, name .. " device")
    g:eq(t:dtype(), "float64", name .. " dtype")
  end
  local f = T.full_like(x, 3)
  g:eq(f:device(), g.device_name, "full_like device")
  g:close(f, T.full({ 2, 3 }, 3.0, { dtype = "float64" }),
    { what = "full_like" })
  g:eq(T.zeros_like(x, { dtype = "int64" }):device(), g.device_name,
    "zeros_like with a dtype: device")
end)

check("item, totable, tostring and indexing read device tensors", function(g)
  local x = T.tensor({ { 1.5, 2 }, { 3, 4 } })
  local d = x:to(g.device)
  g:eq(d:totable(), x:totable(), "totable()")
  g:eq(d:tolist(), x:totable(), "tolist()")
  g:eq(d:sum():item(), 10.5, "sum():item()")
  g:eq(d[2][1], 3.0, "d[2][1]")
  g:eq(d[-1][-1], 4.0, "d[-1][-1]")
  g:eq(#d, 2, "#d")
  g:eq(d:size(), { 2, 2 }, "size()")
  g:eq(d:numel(), 4, "numel()")
  g:eq(d:dim(), 2, "dim()")
  g:eq(d:is_contiguous(), true, "is_contiguous()")
  g:eq(d:t():totable(), x:t():totable(), "totable() of a transposed view")
  for dtype, value in pairs({ float32 = 2.5, float64 = -1.25, int64 = 7,
    int32 = -3, uint8 = 200, bool = true }) do
    local t = T.tensor(value, { dtype = dtype }):to(g.device)
    g:eq(t:item(), value, dtype .. " item()")
    g:eq(T.tensor({ value }, { dtype = dtype }):to(g.device)[1], value,
      dtype .. " t[1]")
  end
  local s = tostring(d)
  local cpu_s = tostring(x)
  if g.device ~= "cpu" then
    g:is(s:find("device='" .. g.device_name .. "'", 1, true),
      "tostring does not name the device: %s", s)
  end
  g:is(s:sub(1, #cpu_s - 1) == cpu_s:sub(1, #cpu_s - 1),
    "tostring differs from the CPU's beyond the device: %s vs %s", s, cpu_s)
  g:is(d:equal(x:to(g.device)), "equal() of equal device tensors")
  g:is(not d:equal((x + 1):to(g.device)), "equal() of different tensors")
  g:is(d:allclose((x + 1e-7):to(g.device)), "allclose() of close tensors")
  local r = T.tensor({ 1.0, 2.0 }, { requires_grad = true })
  local shown = tostring((r:to(g.device) * 2))
  g:is(shown:find("grad_fn", 1, true), "tostring shows no grad_fn: %s", shown)
end)

check("ops mixing devices raise an error naming both", function(g)
  g:need_cuda()
  local c, d = T.ones(2, 2), T.ones(2, 2, { device = "cuda" })
  local cases = {
    { "cpu + cuda", function() return c + d end },
    { "cuda + cpu", function() return d + c end },
    { "cuda * cpu", function() return d * c end },
    { "maximum", function() return d:maximum(c) end },
    { "matmul", function() return d:matmul(c) end },
    { "matmul, cpu first", function() return c:matmul(d) end },
    { "addmm", function() return T.addmm(c:select(1, 1), d, d) end },
    { "cat", function() return T.cat({ d, c }) end },
    { "stack", function() return T.stack({ c, d }) end },
    { "where", function() return T.where(d:gt(0), c, d) end },
    { "gather", function()
      return d:gather(2, T.tensor({ { 1 }, { 2 } })) end },
    { "index_select", function()
      return d:index_select(1, T.tensor({ 1 })) end },
    { "add_", function() return d:add_(c) end },
    { "eq", function() return c:eq(d) end },
  }
  for _, case in ipairs(cases) do
    local ok, err = pcall(case[2])
    g:is(not ok, "%s: mixing devices did not raise", case[1])
    local msg = tostring(err)
    g:is(msg:find("cpu", 1, true) and msg:find("cuda", 1, true),
      "%s: the error does not name both devices: %s", case[1], msg)
  end
end)

check("unknown devices raise clear errors", function(g)
  g:need_cuda()
  local msg = g:raises(function() return T.zeros(2, { device = "cuda:99" }) end,
    "cuda:99")
  g:is(not msg:find("attempt to", 1, true), "not a clear error: %s", msg)
  g:raises(function() return T.ones(2):to("cuda:99") end, "cuda:99")
  g:raises(function() return T.ones(2):cuda(99) end, "99")
  g:raises(function() return T.zeros(2, { device = "tpu" }) end, "tpu")
  g:raises(function() return T.zeros(2, { device = "cuda:x" }) end, "cuda:x")
  g:raises(function() return T.cuda.get_device_name(99) end, "99")
end)

check("modules move with to(), cuda() and cpu()", function(g)
  g:need_cuda()
  local nn = ember.nn
  local m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
  local before = {}
  for i, p in ipairs(m:parameters()) do before[i] = p:detach():clone() end
  g:is(m:cuda() == m, "cuda() should return the module")
  for i, p in ipairs(m:parameters()) do
    g:eq(p:device(), "cuda:0", "parameter " .. i .. " after cuda()")
    g:is(p.is_leaf and p.requires_grad, "parameter %d is no leaf after cuda()",
      i)
    g:close(p, before[i], { what = "parameter " .. i .. " value" })
  end
  local y = m(T.randn(5, 3):cuda())
  g:eq(y:device(), "cuda:0", "output device")
  y:sum():backward()
  for i, p in ipairs(m:parameters()) do
    g:eq(p.grad and p.grad:device(), "cuda:0", "grad " .. i .. " device")
  end
  m:cpu()
  for i, p in ipairs(m:parameters()) do
    g:eq(p:device(), "cpu", "parameter " .. i .. " after cpu()")
  end
  m:to({ device = "cuda", dtype = "float64" })
  for i, p in ipairs(m:parameters()) do
    g:eq(p:device(), "cuda:0", "parameter " .. i .. " after to({device=})")
    g:eq(p:dtype(), "float64", "parameter " .. i .. " dtype after to({dtype=})")
  end
  m:to("cuda")
  g:eq(m:parameters()[1]:device(), "cuda:0", "to('cuda') when already there")
  -- State dicts load across devices.
  local cpu_model = nn.Sequential(nn.Linear(3, 4, { dtype = "float64" }),
    nn.ReLU(), nn.Linear(4, 2, { dtype = "float64" }))
  m:load_state_dict(cpu_model:state_dict())
  for i, p in ipairs(m:parameters()) do
    g:eq(p:device(), "cuda:0", "parameter " .. i .. " after load_state_dict")
    g:close(p, cpu_model:parameters()[i], { what = "loaded parameter " .. i })
  end
end)

check("two devices: modules, errors and memory per device", function(g)
  g:need_devices(2)
  local m = ember.nn.Linear(3, 2)
  m:cuda(1)
  g:eq(m.weight:device(), "cuda:1", "Linear:cuda(1) weight")
  local y = m(T.randn(4, 3):to("cuda:1"))
  g:eq(y:device(), "cuda:1", "output on cuda:1")
  g:raises(function() return m(T.randn(4, 3):cuda()) end, "cuda:0", "cuda:1")
  collectgarbage()
  collectgarbage()
  local s0, s1 = T.cuda.memory_stats(0), T.cuda.memory_stats(1)
  local keep = T.zeros(1 << 16, { device = "cuda:1" })
  local t0, t1 = T.cuda.memory_stats(0), T.cuda.memory_stats(1)
  g:eq(t0.allocated_bytes, s0.allocated_bytes, "cuda:0 allocated_bytes")
  g:is(t1.allocated_bytes >= s1.allocated_bytes + 4 * (1 << 16),
    "cuda:1 allocated_bytes grew by %d, expected >= %d",
    t1.allocated_bytes - s1.allocated_bytes, 4 * (1 << 16))
  g:eq(keep:device(), "cuda:1", "device")
end)

-- The caching allocator: freed blocks are reused, not given back and asked
-- for again.
check("caching allocator: 1000 tensors of one size reuse blocks", function(g)
  g:need_cuda()
  local cuda = T.cuda
  collectgarbage()
  collectgarbage()
  cuda.synchronize()
  local before = cuda.memory_stats()
  -- Dropped right away by __close, as PyTorch's refcounting would.
  for i = 1, 1000 do
    local t <close> = T.zeros(1000, { device = "cuda" })
    t:add_(i)
  end
  local closed = cuda.memory_stats()
  g:is(closed.raw_allocs - before.raw_allocs <= 10,
    "1000 tensors closed at once made %d raw allocations",
    closed.raw_allocs - before.raw_allocs)
  g:is(closed.reuses - before.reuses >= 990, "only %d reuses",
    closed.reuses - before.reuses)
  -- Dropped and left to the garbage collector, collected now and then.
  for i = 1, 1000 do
    local t = T.ones(1000, { device = "cuda" }) * i
    t = nil
    if i % 25 == 0 then collectgarbage() end
  end
  collectgarbage()
  collectgarbage()
  local after = cuda.memory_stats()
  local raw = after.raw_allocs - before.raw_allocs
  g:is(raw < 150, "2000 tensors made %d raw allocations: no caching?", raw)
  g:is(after.allocated_bytes <= before.allocated_bytes,
    "allocated_bytes %d after collectgarbage(), %d before",
    after.allocated_bytes, before.allocated_bytes)
  g:is(after.cached_bytes > 0, "nothing cached after freeing 2000 tensors")
  g:is(after.peak_bytes >= before.allocated_bytes + 4000,
    "peak_bytes %d, below the 4000 bytes of one tensor", after.peak_bytes)
  cuda.empty_cache()
  local emptied = cuda.memory_stats()
  g:eq(emptied.cached_bytes, 0, "cached_bytes after empty_cache()")
  g:eq(emptied.allocated_bytes, after.allocated_bytes,
    "allocated_bytes after empty_cache()")
  -- A live tensor counts, and stops counting once collected.
  local big = T.zeros(1 << 18, { device = "cuda" })
  local live = cuda.memory_stats()
  g:is(live.allocated_bytes >= emptied.allocated_bytes + 4 * (1 << 18),
    "allocated_bytes grew by %d for a 1 MiB tensor",
    live.allocated_bytes - emptied.allocated_bytes)
  g:eq(big:device(), "cuda:0", "device")
  big = nil
  collectgarbage()
  collectgarbage()
  g:eq(cuda.memory_stats().allocated_bytes, emptied.allocated_bytes,
    "allocated_bytes once the 1 MiB tensor is collected")
end)

return checks
