-- ember.distributions: Categorical sampling, log_prob and entropy.
local ember = require "ember"
local T = require "ember.tensor"
local distributions = require "ember.distributions"
local Categorical = distributions.Categorical

local F64 = { dtype = "float64" }

local function error_of(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  return tostring(err)
end

local function assert_close(expected, actual, tol)
  assert(math.abs(actual - expected) <= (tol or 1e-12) *
    math.max(1, math.abs(expected)),
    ("expected %.15g, got %.15g"):format(expected, actual))
end

local function counts(samples, K)
  local c = {}
  for k = 1, K do c[k] = 0 end
  local flat = samples:reshape({ samples:numel() })
  for i = 1, samples:numel() do
    local k = flat[i]
    c[k] = c[k] + 1
  end
  return c
end

-- Each observed frequency within 4 standard errors of its probability.
local function assert_frequencies(probs, c, n)
  for k, p in ipairs(probs) do
    local se = math.sqrt(p * (1 - p) / n)
    local freq = c[k] / n
    assert(math.abs(freq - p) <= 4 * se + 1e-12,
      ("category %d: frequency %.4f, probability %.4f (4 se = %.4f)"):format(
        k, freq, p, 4 * se))
  end
end

before_each(function() T.manual_seed(2024) end)

describe("Categorical", function()
  it("is reachable from ember and takes probs, logits or a tensor", function()
    assert.equal(distributions, ember.distributions)
    local p = T.tensor({ 0.2, 0.5, 0.3 })
    for _, d in ipairs({ Categorical({ probs = p }), Categorical(p),
      Categorical.new({ probs = p }) }) do
      assert.is_true(d.probs:allclose(p))
      assert.same({ 3 }, d.param_shape)
      assert.same({}, d.batch_shape)
    end
    assert.matches("Categorical(probs: [3])", tostring(Categorical(p)), 1, true)
  end)

  it("normalises probs along the last dim", function()
    local d = Categorical({ probs = T.tensor({ { 1.0, 3.0 }, { 2.0, 2.0 } }) })
    assert.same({ { 0.25, 0.75 }, { 0.5, 0.5 } }, d.probs:totable())
    assert.same({ 2 }, d.batch_shape)
    assert.same({ 2, 2 }, d.param_shape)
    local lp = d.logits:totable()
    assert_close(math.log(0.25), lp[1][1], 1e-6)
    assert_close(math.log(0.5), lp[2][2], 1e-6)
  end)

  it("normalises logits: logits - logsumexp", function()
    local d = Categorical({ logits = T.tensor({ 1.0, 2.0, 3.0 }, F64) })
    local lse = math.log(math.exp(1) + math.exp(2) + math.exp(3))
    local l = d.logits:totable()
    for k = 1, 3 do
      assert_close(k - lse, l[k])
      assert_close(math.exp(k - lse), d.probs[k])
    end
  end)

  it("samples with the right frequencies", function()
    local probs = { 0.2, 0.5, 0.3 }
    local d = Categorical({ probs = T.tensor(probs) })
    local n = 20000
    local s = d:sample(n)
    assert.same({ n }, s:size())
    assert.equal("int64", s:dtype())
    assert_frequencies(probs, counts(s, 3), n)
    -- One draw at a time: 0-dim, so item() works.
    local one = d:sample()
    assert.equal(0, one:dim())
    local c = { 0, 0, 0 }
    for _ = 1, 2000 do
      local k = d:sample():item()
      assert.is_true(k >= 1 and k <= 3)
      c[k] = c[k] + 1
    end
    assert_frequencies(probs, c, 2000)
  end)

  it("samples from logits like from the probs they give", function()
    local probs = { 0.1, 0.6, 0.3 }
    local logits = T.tensor(probs, F64):log() + 5 -- any shift: same dist
    local n = 20000
    assert_frequencies(probs,
      counts(Categorical({ logits = logits }):sample(n), 3), n)
  end)

  it("never samples a zero-probability category", function()
    local s = Categorical(T.tensor({ 0.0, 1.0, 0.0 })):sample(500)
    assert.same({ 0, 500, 0 }, counts(s, 3))
  end)

  it("samples batched distributions", function()
    local probs = T.tensor({ { 0.9, 0.1 }, { 0.1, 0.9 }, { 0.5, 0.5 } })
    local d = Categorical(probs)
    assert.same({ 3 }, d.batch_shape)
    assert.same({ 3 }, d:sample():size())
    local n = 10000
    local s = d:sample(n)
    assert.same({ n, 3 }, s:size())
    for b, p in ipairs({ 0.9, 0.1, 0.5 }) do
      assert_frequencies({ p, 1 - p }, counts(s:select(2, b), 2), n)
    end
    assert.same({ 4, 5, 3 }, d:sample({ 4, 5 }):size())
    local deep = Categorical(T.rand(2, 3, 4))
    assert.same({ 2, 3 }, deep.batch_shape)
    assert.same({ 2, 3 }, deep:sample():size())
    assert.same({ 6, 2, 3 }, deep:sample(6):size())
    assert.same({ 6, 2, 3 }, deep:log_prob(deep:sample(6)):size())
    assert.same({ 2, 3 }, deep:entropy():size())
  end)

  it("gives log_prob by hand, for probs and logits alike", function()
    local probs = T.tensor({ 0.2, 0.5, 0.3 }, F64)
    local dp = Categorical({ probs = probs })
    local dl = Categorical({ logits = probs:log() })
    for k, p in ipairs({ 0.2, 0.5, 0.3 }) do
      assert_close(math.log(p), dp:log_prob(T.tensor(k)):item())
      assert_close(math.log(p), dl:log_prob(T.tensor(k)):item())
      assert_close(math.log(p), dp:log_prob(k):item())
    end
    assert.equal(0, dp:log_prob(T.tensor(2)):dim())
    local many = dp:log_prob(T.tensor({ 3, 1, 3 }))
    assert.same({ 3 }, many:size())
    assert_close(math.log(0.3), many[3])
  end)

  it("gives batched log_prob and broadcasts values", function()
    local d = Categorical(T.tensor({ { 0.2, 0.8 }, { 0.6, 0.4 } }, F64))
    local lp = d:log_prob(T.tensor({ 2, 1 }))
    assert.same({ 2 }, lp:size())
    assert_close(math.log(0.8), lp[1])
    assert_close(math.log(0.6), lp[2])
    -- A scalar value applies to every distribution in the batch.
    local one = d:log_prob(T.tensor(2))
    assert_close(math.log(0.8), one[1])
    assert_close(math.log(0.4), one[2])
    local err = error_of(d.log_prob, d, T.tensor({ 1, 2, 1 }))
    assert.matches("value of shape [3] does not broadcast with batch shape [2]",
      err, 1, true)
  end)

  it("has log_prob gradients for REINFORCE", function()
    -- d log p_k / d logit_j = [j = k] - p_j
    local logits = T.tensor({ 0.5, -1.0, 2.0 }, { dtype = "float64",
      requires_grad = true })
    local d = Categorical({ logits = logits })
    d:log_prob(T.tensor(1)):backward()
    local p = logits:detach():softmax(1):totable()
    local g = logits.grad:totable()
    assert_close(1 - p[1], g[1])
    assert_close(-p[2], g[2])
    assert_close(-p[3], g[3])
    -- Through probs: d log(p_k / sum p) / d p_j = [j = k] / p_k - 1 / sum p.
    local probs = T.tensor({ 1.0, 2.0, 1.0 }, { dtype = "float64",
      requires_grad = true })
    Categorical({ probs = probs }):log_prob(T.tensor(2)):backward()
    local gp = probs.grad:totable()
    assert_close(-0.25, gp[1])
    assert_close(0.5 - 0.25, gp[2])
    assert_close(-0.25, gp[3])
  end)

  it("gives entropy by hand", function()
    local d = Categorical(T.tensor({ 0.2, 0.5, 0.3 }, F64))
    local h = -(0.2 * math.log(0.2) + 0.5 * math.log(0.5) + 0.3 * math.log(0.3))
    assert_close(h, d:entropy():item())
    assert.equal(0, d:entropy():dim())
    assert_close(h, Categorical({ logits = T.tensor({ 0.2, 0.5, 0.3 }, F64)
      :log() }):entropy():item())
    -- Uniform over 4: log 4; a certain outcome: 0 (no NaN from 0 log 0).
    local b = Categorical(T.tensor({ { 1, 1, 1, 1 }, { 0, 0, 1, 0 } }, F64))
    local e = b:entropy()
    assert_close(math.log(4), e[1])
    assert.is_true(math.abs(e[2]) < 1e-12)
    local inf = Categorical({ logits = T.tensor({ 0.0, -math.huge }) })
    assert.is_true(math.abs(inf:entropy():item()) < 1e-6)
  end)

  it("gives mode()", function()
    local d = Categorical(T.tensor({ { 0.2, 0.5, 0.3 }, { 0.6, 0.3, 0.1 } }))
    assert.same({ 2, 1 }, d:mode():totable())
  end)

  it("names bad arguments and values", function()
    local p = T.tensor({ 0.2, 0.8 })
    assert.matches("exactly one of", error_of(Categorical, {}), 1, true)
    assert.matches("exactly one of",
      error_of(Categorical, { probs = p, logits = p }), 1, true)
    assert.matches("probs must be a tensor",
      error_of(Categorical, { probs = { 0.5, 0.5 } }), 1, true)
    assert.matches("float tensor",
      error_of(Categorical, { probs = T.tensor({ 1, 2 }) }), 1, true)
    assert.matches("at least one dim",
      error_of(Categorical, { logits = T.tensor(1.0) }), 1, true)
    local d = Categorical(p)
    assert.matches("category 3 is out of range 1..2",
      error_of(d.log_prob, d, T.tensor({ 1, 3 })), 1, true)
    assert.matches("category 0 is out of range 1..2",
      error_of(d.log_prob, d, T.tensor(0)), 1, true)
    assert.matches("non-integer",
      error_of(d.log_prob, d, T.tensor(1.5)), 1, true)
    assert.matches("integer tensor or integer",
      error_of(d.log_prob, d, "1"), 1, true)
  end)
end)
