-- Randomness on the device: uniform and normal draws have the right
-- moments, the generator is seeded, dropout zeroes about p of the elements
-- and scales the rest by 1 / (1 - p), Categorical and multinomial draws
-- follow their probabilities (categories from 1). The device draws its own
-- numbers, so these compare statistics, not values, with bounds of four to
-- eight standard errors: with the fixed seeds they pass or fail the same
-- way every run.
local ember = require "ember"
local T = ember.tensor

local checks = {}
local function check(name, fn) checks[#checks + 1] = { name, fn } end

local N = 100000

local function near(g, got, want, tol, what)
  g:is(math.abs(got - want) <= tol, "%s: %.6g, expected %.6g +- %g", what, got,
    want, tol)
end

-- The fraction of true elements of a bool tensor (on any device).
local function share(mask)
  return mask:sum():item() / mask:numel()
end

-- The fraction of elements of t equal to k.
local function fraction(t, k)
  return share(t:eq(k))
end

check("rand: uniform on [0, 1), mean 1/2, variance 1/12", function(g)
  for _, dtype in ipairs({ "float32", "float64" }) do
    local x = T.rand(N, { device = g.device, dtype = dtype })
    g:eq(x:device(), g.device_name, "device")
    g:eq(x:dtype(), dtype, "dtype")
    g:eq(x:size(), { N }, "shape")
    g:is(x:min():item() >= 0 and x:max():item() < 1,
      "%s: values outside [0, 1)", dtype)
    near(g, x:mean():item(), 0.5, 0.005, dtype .. " mean")
    near(g, x:var():item(), 1 / 12, 0.002, dtype .. " variance")
    -- Not a constant or a short cycle: most values are distinct from their
    -- neighbours, and the halves have about equal means.
    near(g, share(x:narrow(1, 1, N - 1):eq(x:narrow(1, 2, N - 1))),
      0, 0.001, dtype .. " fraction of equal neighbours")
    near(g, x:narrow(1, 1, N // 2):mean():item(), 0.5, 0.007,
      dtype .. " first half mean")
  end
  local m = T.rand(300, 400, { device = g.device })
  near(g, m:mean(1):mean():item(), 0.5, 0.005, "2-D mean")
  near(g, m:mean(2):std():item(), math.sqrt(1 / 12 / 400), 0.003,
    "2-D spread of row means")
end)

check("randn: mean 0, standard deviation 1", function(g)
  for _, dtype in ipairs({ "float32", "float64" }) do
    local x = T.randn(N, { device = g.device, dtype = dtype })
    g:eq(x:device(), g.device_name, "device")
    near(g, x:mean():item(), 0, 0.02, dtype .. " mean")
    near(g, x:std():item(), 1, 0.015, dtype .. " std")
    near(g, share(x:gt(0)), 0.5, 0.01, dtype .. " fraction > 0")
    near(g, share(x:abs():lt(1)), 0.6827, 0.01,
      dtype .. " fraction within one sd")
  end
end)

check("uniform_ and normal_ fill device tensors", function(g)
  local u = T.empty(N, { device = g.device }):uniform_(-2, 2)
  g:eq(u:device(), g.device_name, "device")
  g:is(u:min():item() >= -2 and u:max():item() < 2, "values outside [-2, 2)")
  near(g, u:mean():item(), 0, 0.02, "uniform_(-2, 2) mean")
  local n = T.empty(N, { device = g.device, dtype = "float64" }):normal_(3, 0.5)
  near(g, n:mean():item(), 3, 0.01, "normal_(3, 0.5) mean")
  near(g, n:std():item(), 0.5, 0.01, "normal_(3, 0.5) std")
  -- Into a non-contiguous view: only its elements change.
  local base = T.zeros(200, 300, { device = g.device })
  base:t():narrow(1, 101, 100):uniform_(1, 2)
  near(g, share(base:narrow(2, 101, 100):ge(1)), 1, 0, "filled part")
  near(g, share(base:narrow(2, 1, 100):eq(0)), 1, 0,
    "untouched part")
end)

check("the generator is seeded: same seed, same numbers", function(g)
  T.manual_seed(5)
  local a = T.rand(1000, { device = g.device })
  local b = T.randn(1000, { device = g.device })
  T.manual_seed(5)
  local a2 = T.rand(1000, { device = g.device })
  local b2 = T.randn(1000, { device = g.device })
  local exact = { rtol = 0, atol = 0 }
  exact.what = "rand after the same seed"
  g:close(a2, a:cpu(), exact)
  exact.what = "randn after the same seed"
  g:close(b2, b:cpu(), exact)
  local c = T.rand(1000, { device = g.device })
  g:is(not c:equal(a), "the next draw repeats the first")
  T.manual_seed(6)
  g:is(not T.rand(1000, { device = g.device }):equal(a),
    "another seed gives the same numbers")
end)

-- tensor.h's contract for a device's random kernels: element i (row-major)
-- of a fill is ember_counter_uniform/normal(seed, i), the seed coming from
-- T.manual_seed's generator, so every CUDA device draws the same numbers.
-- These values are the host implementation's (drawn on EMBER_CUDA_SIM's
-- device); a GPU's kernels must give them too.
check("the counter-based generator draws the documented numbers", function(g)
  g:need_cuda()
  local d = g.device
  local f32 = { rtol = 0, atol = 1e-6 }
  T.manual_seed(3)
  f32.what = "rand(2, 3) after manual_seed(3)"
  g:close(T.rand(2, 3, { device = d }), T.tensor({ { 0.78967922925949097,
    0.43735599517822266, 0.99205482006072998 }, { 0.98036140203475952,
    0.29203218221664429, 0.64758139848709106 } }), f32)
  g:close(T.randn(4, { device = d, dtype = "float64" }),
    T.tensor({ -0.97659471917103835, 0.84684695901847162,
      -0.48340429391791462, -0.80114356222684502 }, { dtype = "float64" }),
    { what = "then randn(4) float64", rtol = 1e-12, atol = 1e-14 })
  local base = T.zeros(3, 2, { device = d })
  base:t():uniform_(0, 1)
  f32.what = "then uniform_ into a transposed view"
  g:close(base, T.tensor({ { 0.30416250228881836, 0.27382051944732666 },
    { 0.50671887397766113, 0.89218014478683472 },
    { 0.59143298864364624, 0.98699969053268433 } }), f32)
  f32.what = "then normal_(1, 2)"
  f32.rtol = 1e-6
  g:close(T.empty(3, { device = d }):normal_(1, 2),
    T.tensor({ 0.95351386070251465, -1.518907904624939, -3.8812434673309326 }),
    f32)
  g:close(T.tensor({ { 0.1, 0.2, 0.7 }, { 0.5, 0.25, 0.25 } }):to(d)
    :multinomial(6, true),
    T.tensor({ { 3, 3, 3, 3, 2, 3 }, { 3, 1, 1, 1, 3, 1 } }),
    { what = "then multinomial(6, true)" })
end)

check("two devices: one seed draws the same numbers on cuda:0 and cuda:1",
  function(g)
    g:need_devices(2)
    for _, name in ipairs({ "rand", "randn" }) do
      T.manual_seed(11)
      local a = T[name](4, 5, { device = "cuda:0" })
      T.manual_seed(11)
      local b = T[name](4, 5, { device = "cuda:1" })
      g:eq(b:device(), "cuda:1", name .. " device")
      g:close(b:cpu(), a:cpu(), { what = name, rtol = 0, atol = 0 })
    end
  end)

check("dropout zeroes about p and scales the rest by 1 / (1 - p)",
  function(g)
    local x = T.ones(N, { device = g.device, requires_grad = true })
    for _, p in ipairs({ 0.6, 0.2 }) do
      local y = T.dropout(x, p, true)
      g:eq(y:device(), g.device_name, "device")
      near(g, fraction(y, 0), p, 0.01, ("p = %g: fraction zeroed"):format(p))
      local kept = T.where(y:eq(0), 1 / (1 - p), y)
      local scale = T.full({ N }, 1 / (1 - p))
      g:close(kept, scale, { what = ("p = %g: kept values"):format(p) })
    end
    -- The gradient is the same mask, scaled.
    local y = T.dropout(x, 0.6, true)
    y:sum():backward()
    g:close(x.grad, y:detach():cpu(), { what = "dropout gradient",
      device = g.device_name })
    -- nn.Dropout: random in training, the identity in eval mode.
    local d = ember.nn.Dropout(0.6)
    local z = T.randn(1000, { device = g.device })
    near(g, fraction(d(z), 0), 0.6, 0.06, "nn.Dropout training")
    d:eval()
    g:close(d(z), z:cpu(), { what = "nn.Dropout eval", device = g.device_name })
    g:close(T.dropout(z, 1, true), T.zeros(1000), { what = "p = 1" })
  end)

check("Categorical samples follow probs, categories 1..K", function(g)
  local Categorical = ember.distributions.Categorical
  local probs = T.tensor({ 0.1, 0.2, 0.3, 0.4 })
  local m = Categorical(probs:to(g.device))
  local s = m:sample(40000)
  g:eq(s:device(), g.device_name, "sample device")
  g:eq(s:dtype(), "int64", "sample dtype")
  g:eq(s:size(), { 40000 }, "sample shape")
  g:is(s:min():item() >= 1 and s:max():item() <= 4,
    "categories outside 1..4: %d..%d", s:min():item(), s:max():item())
  for k = 1, 4 do
    near(g, fraction(s, k), probs[k], 0.012, "frequency of category " .. k)
  end
  local one = m:sample()
  g:eq(one:dim(), 0, "a single sample is 0-dim")
  -- A batch of distributions, as the batch agent has: one row per observer.
  local rows = T.tensor({ { 0.9, 0.1 }, { 0.5, 0.5 }, { 0.2, 0.8 } })
  local mb = Categorical(rows:to(g.device))
  local sb = mb:sample(20000)
  g:eq(sb:size(), { 20000, 3 }, "batch sample shape")
  for r = 1, 3 do
    near(g, fraction(sb:select(2, r), 1), rows[r][1], 0.015,
      ("row %d frequency of category 1"):format(r))
  end
  -- log_prob and entropy are deterministic: equal to the CPU's.
  g:same(function(p, a)
    local c = Categorical(p)
    return c:log_prob(a), c:entropy(), c.probs, c:mode()
  end, { rows, T.tensor({ 2, 1, 2 }) }, { what = "log_prob, entropy, mode",
    loose = true })
  g:same(function(l) return Categorical({ logits = l }).probs end,
    { T.randn(3, 5) }, { what = "from logits", loose = true })
end)

check("multinomial with and without replacement", function(g)
  local p = T.tensor({ { 1, 0, 3 }, { 0.5, 0.5, 0 } }, { dtype = "float64" })
  local s = p:to(g.device):multinomial(30000, true)
  g:eq(s:device(), g.device_name, "device")
  g:eq(s:size(), { 2, 30000 }, "shape")
  g:eq(s:dtype(), "int64", "dtype")
  near(g, fraction(s:select(1, 1), 1), 0.25, 0.012, "row 1: category 1")
  near(g, fraction(s:select(1, 1), 2), 0, 0, "row 1: category 2 (p = 0)")
  near(g, fraction(s:select(1, 1), 3), 0.75, 0.012, "row 1: category 3")
  near(g, fraction(s:select(1, 2), 3), 0, 0, "row 2: category 3 (p = 0)")
  near(g, fraction(s:select(1, 2), 1), 0.5, 0.012, "row 2: category 1")
  for _ = 1, 20 do
    local w = T.tensor({ 0.1, 0.6, 0.3, 0.0001 }):to(g.device)
      :multinomial(4, false)
    local seen = {}
    for _, k in ipairs(w:totable()) do
      g:is(k >= 1 and k <= 4 and not seen[k],
        "without replacement: %s is not a permutation of 1..4",
        table.concat(w:totable(), ", "))
      seen[k] = true
    end
  end
  local firsts = T.tensor({ 0.1, 0.6, 0.3 }):to(g.device)
    :expand(5000, 3):multinomial(1, false)
  near(g, fraction(firsts, 2), 0.6, 0.03, "without replacement: first draw")
end)

return checks
