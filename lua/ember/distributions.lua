-- ember.distributions: probability distributions for policies, in the manner
-- of torch.distributions. Categories are 1-based, as everywhere in ember.
--
--   local probs = policy(state)                 -- {2}, sums to 1
--   local m = distributions.Categorical({probs = probs})
--   local action = m:sample()                   -- 0-dim int64, 1 or 2
--   local log_prob = m:log_prob(action)         -- differentiable in probs
local T = require "ember.tensor"

local distributions = {}

local function shape_str(shape)
  return "[" .. table.concat(shape, ", ") .. "]"
end

-- The smallest x with 1 + x ~= 1, per dtype (probs are clamped to
-- [eps, 1 - eps] before the log, as PyTorch's probs_to_logits does).
local EPS = { float32 = 1.1920928955078125e-07, float64 = 2.220446049250313e-16 }
local LOWEST = { float32 = -3.4028234663852886e38, float64 = -math.huge }

-- ---- Categorical ---------------------------------------------------------------

local Categorical = {}
Categorical.__index = Categorical
Categorical.__name = "Categorical"

-- Categorical({probs = t}), Categorical({logits = t}) or Categorical(probs).
-- The last dim of t holds the K categories; the dims before it are the
-- batch shape. probs need not sum to 1: they are normalised.
local function new_categorical(args)
  if T.is_tensor(args) then args = { probs = args } end
  if type(args) ~= "table" or (args.probs == nil) == (args.logits == nil) then
    error("Categorical: pass exactly one of {probs = tensor} or "
      .. "{logits = tensor}", 3)
  end
  local given = args.probs ~= nil and "probs" or "logits"
  local t = args[given]
  if not T.is_tensor(t) then
    error(("Categorical: %s must be a tensor, got %s"):format(given, type(t)), 3)
  end
  if t:dim() < 1 or t:size(-1) < 1 then
    error(("Categorical: %s must have at least one dim with at least one "
      .. "category, got shape %s"):format(given, shape_str(t:size())), 3)
  end
  if not t:dtype():match("^float") then
    error(("Categorical: %s must be a float tensor, got %s"):format(
      given, t:dtype()), 3)
  end
  local self = setmetatable({}, Categorical)
  if given == "probs" then
    self.probs = t / t:sum(-1, true)
    local eps = EPS[t:dtype()] or EPS.float32
    self.logits = self.probs:clamp(eps, 1 - eps):log()
  else
    self.logits = t:log_softmax(-1) -- logits - logsumexp(logits)
    self.probs = self.logits:exp()
  end
  self.param_shape = t:size()
  self.num_events = t:size(-1)
  local batch = t:size()
  batch[#batch] = nil
  self.batch_shape = batch
  self.event_shape = {}
  return self
end

distributions.Categorical = setmetatable({ new = new_categorical }, {
  __call = function(_, args) return new_categorical(args) end,
  __index = Categorical,
})

local function numel(shape)
  local n = 1
  for _, s in ipairs(shape) do n = n * s end
  return n
end

-- sample([n]): int64 categories 1..K of the batch shape (0-dim for a single
-- distribution); sample(n) adds a leading dim n, sample({n1, n2}) two.
-- sample_shape: nil, a count or a list of counts (integers >= 0).
local function check_sample_shape(sample_shape)
  if type(sample_shape) == "number" then sample_shape = { sample_shape } end
  sample_shape = sample_shape or {}
  if type(sample_shape) ~= "table" or T.is_tensor(sample_shape) then
    error(("Categorical:sample: sample_shape must be an integer or a list of "
      .. "integers, got %s"):format(type(sample_shape)), 3)
  end
  for i, n in ipairs(sample_shape) do
    if math.type(n) ~= "integer" or n < 0 then
      error(("Categorical:sample: sample_shape[%d] must be an integer >= 0, "
        .. "got %s"):format(i, tostring(n)), 3)
    end
  end
  return sample_shape
end

function Categorical:sample(sample_shape)
  sample_shape = check_sample_shape(sample_shape)
  local draws = numel(sample_shape)
  local K = self.num_events
  local rows = numel(self.batch_shape)
  local out = T.no_grad(function()
    local p = self.probs:detach():reshape({ rows, K })
    local s = p:multinomial(draws, true) -- {rows, draws}
    return s:t()                         -- {draws, rows}
  end)
  local shape = { table.unpack(sample_shape) }
  for _, s in ipairs(self.batch_shape) do shape[#shape + 1] = s end
  return out:reshape(shape)
end

-- Broadcast shape of two shapes (trailing dims aligned), or nil.
local function broadcast(a, b)
  local n = math.max(#a, #b)
  local out = {}
  for i = 1, n do
    local x = a[#a - n + i] or 1
    local y = b[#b - n + i] or 1
    if x ~= y and x ~= 1 and y ~= 1 then return nil end
    out[i] = x == 1 and y or x
  end
  return out
end

-- log_prob(value): the log-probability of categories `value` (an integer
-- tensor or number, broadcast against the batch shape); differentiable
-- with respect to probs or logits.
function Categorical:log_prob(value)
  if math.type(value) == "integer" then
    value = T.tensor(value, { device = self.probs:device() })
  end
  if not T.is_tensor(value) then
    error(("Categorical:log_prob: value must be an integer tensor or integer, "
      .. "got %s"):format(type(value)), 2)
  end
  if value:dtype():match("^float") then
    if not value:equal(value:to("int64"):to(value:dtype())) then
      error("Categorical:log_prob: value holds non-integer categories", 2)
    end
    value = value:to("int64")
  end
  local K = self.num_events
  if value:numel() > 0 then
    local lo, hi = value:min():item(), value:max():item()
    if lo < 1 or hi > K then
      error(("Categorical:log_prob: category %d is out of range 1..%d"):format(
        lo < 1 and lo or hi, K), 2)
    end
  end
  local shape = broadcast(value:size(), self.batch_shape)
  if shape == nil then
    error(("Categorical:log_prob: value of shape %s does not broadcast with "
      .. "batch shape %s"):format(shape_str(value:size()),
        shape_str(self.batch_shape)), 2)
  end
  local logits = self.logits
  local full = { table.unpack(shape) }
  full[#full + 1] = K
  if shape_str(full) ~= shape_str(logits:size()) then
    logits = logits:expand(full)
  end
  if shape_str(shape) ~= shape_str(value:size()) then
    value = value:expand(shape)
  end
  return logits:gather(-1, value:unsqueeze(-1)):squeeze(-1)
end

-- entropy(): -sum(p * log p) over the categories, of the batch shape.
function Categorical:entropy()
  local lowest = LOWEST[self.logits:dtype()] or LOWEST.float32
  local logits = self.logits:clamp(lowest)
  return -(logits * self.probs):sum(-1)
end

-- mode(): the most likely category (the first among ties).
function Categorical:mode()
  return self.probs:argmax(-1)
end

function Categorical.__tostring(self)
  return ("Categorical(probs: %s)"):format(shape_str(self.param_shape))
end

return distributions
