-- ember.nn: modules, layers and losses in the manner of torch.nn.
--
--   local nn = require "ember.nn"
--   local Policy = nn.Module:extend("Policy")
--   function Policy:init()
--     self.affine1 = nn.Linear(4, 128)   -- registered, in assignment order
--     self.affine2 = nn.Linear(128, 2)
--   end
--   function Policy:forward(x)
--     return self.affine2(nn.F.relu(self.affine1(x))):softmax(-1)
--   end
--   local policy = Policy()
--
-- Assigning a Module, or a leaf tensor that requires grad, to a field of a
-- module registers it as a submodule or a parameter. parameters() (a list),
-- named_parameters() (an iterator: `for name, p in m:named_parameters()`)
-- and state_dict() (a map whose pairs() runs in order) list a module's own
-- parameters in registration order, then each child's, as PyTorch does.
-- Dims and indices are 1-based, as everywhere in ember.
local T = require "ember.tensor"

local nn = {}

local function shape_str(t)
  return "[" .. table.concat(t:size(), ", ") .. "]"
end

local function check_int(fname, what, v, min)
  if math.type(v) ~= "integer" or v < (min or 0) then
    error(("%s: %s must be an integer >= %d, got %s"):format(
      fname, what, min or 0, tostring(v)), 3)
  end
end

local function check_opts(fname, opts)
  if opts ~= nil and type(opts) ~= "table" then
    error(("%s: options must be a table, got %s"):format(fname, type(opts)), 4)
  end
  return opts or {}
end

local function check_tensor(fname, what, v, level)
  if not T.is_tensor(v) then
    error(("%s: %s must be a tensor, got %s"):format(fname, what, type(v)),
      level or 3)
  end
  return v
end

-- A probability: a number in [0, 1] (NaN is not one).
local function check_probability(fname, what, p)
  if type(p) ~= "number" or not (p >= 0 and p <= 1) then
    error(("%s: %s must be a probability in [0, 1], got %s"):format(fname,
      what, tostring(p)), 4)
  end
  return p
end

local Module = require "ember.nn.module"
nn.Module = Module
local is_module = Module.is_module
nn.is_module = is_module

-- ---- nn.init -----------------------------------------------------------------------

local init = {}
nn.init = init

local function fans(t, fname)
  check_tensor(fname, "t", t, 4)
  if t:dim() < 2 then
    error(("%s: fan in and fan out need a tensor of at least 2 dims, got %s")
      :format(fname, shape_str(t)), 3)
  end
  local receptive = 1
  for d = 3, t:dim() do receptive = receptive * t:size(d) end
  return t:size(2) * receptive, t:size(1) * receptive
end

function init.uniform_(t, a, b)
  check_tensor("nn.init.uniform_", "t", t)
  return T.no_grad(function() return t:uniform_(a or 0, b or 1) end)
end

function init.normal_(t, mean, std)
  check_tensor("nn.init.normal_", "t", t)
  return T.no_grad(function() return t:normal_(mean or 0, std or 1) end)
end

function init.constant_(t, v)
  check_tensor("nn.init.constant_", "t", t)
  return T.no_grad(function() return t:fill_(v) end)
end

function init.zeros_(t) return init.constant_(t, 0) end
function init.ones_(t) return init.constant_(t, 1) end

-- kaiming_uniform_(t, a = 0, {mode = "fan_in"}): the leaky-ReLU gain.
function init.kaiming_uniform_(t, a, opts)
  a = a or 0
  local fan_in, fan_out = fans(t, "kaiming_uniform_")
  local fan = (opts and opts.mode == "fan_out") and fan_out or fan_in
  local gain = math.sqrt(2 / (1 + a * a))
  local bound = math.sqrt(3) * gain / math.sqrt(fan)
  return init.uniform_(t, -bound, bound)
end

function init.kaiming_normal_(t, a, opts)
  a = a or 0
  local fan_in, fan_out = fans(t, "kaiming_normal_")
  local fan = (opts and opts.mode == "fan_out") and fan_out or fan_in
  return init.normal_(t, 0, math.sqrt(2 / (1 + a * a)) / math.sqrt(fan))
end

function init.xavier_uniform_(t, gain)
  local fan_in, fan_out = fans(t, "xavier_uniform_")
  local bound = (gain or 1) * math.sqrt(6 / (fan_in + fan_out))
  return init.uniform_(t, -bound, bound)
end

function init.xavier_normal_(t, gain)
  local fan_in, fan_out = fans(t, "xavier_normal_")
  return init.normal_(t, 0, (gain or 1) * math.sqrt(2 / (fan_in + fan_out)))
end

-- ---- nn.functional ------------------------------------------------------------------

local F = {}
nn.functional, nn.F = F, F

function F.relu(x) return x:relu() end
function F.sigmoid(x) return x:sigmoid() end
function F.tanh(x) return x:tanh() end
function F.softmax(x, dim) return x:softmax(dim or -1) end
function F.log_softmax(x, dim) return x:log_softmax(dim or -1) end
function F.dropout(x, p, training) return T.dropout(x, p, training ~= false) end

-- linear(x, weight {out, in}, [bias {out}]) = x @ weight^T + bias
function F.linear(x, weight, bias)
  check_tensor("linear", "input", x)
  check_tensor("linear", "weight", weight)
  local in_features = weight:size(-1)
  if x:dim() == 0 or x:size(-1) ~= in_features then
    error(("linear: input of shape %s does not match weight of shape %s "
      .. "(last dim must be %d)"):format(shape_str(x), shape_str(weight),
        in_features), 2)
  end
  if x:dim() == 2 and bias ~= nil then return T.addmm(bias, x, weight:t()) end
  local y = x:matmul(weight:t())
  if bias ~= nil then y = y + bias end
  return y
end

local function reduce(fname, loss, reduction)
  reduction = reduction or "mean"
  if reduction == "mean" then return loss:mean() end
  if reduction == "sum" then return loss:sum() end
  if reduction == "none" then return loss end
  error(("%s: reduction must be 'mean', 'sum' or 'none', got '%s'"):format(
    fname, tostring(reduction)), 3)
end

function F.mse_loss(input, target, opts)
  check_tensor("mse_loss", "input", input)
  check_tensor("mse_loss", "target", target)
  if shape_str(input) ~= shape_str(target) then
    error(("mse_loss: input of shape %s and target of shape %s differ")
      :format(shape_str(input), shape_str(target)), 2)
  end
  local diff = input - target
  return reduce("mse_loss", diff * diff, opts and opts.reduction)
end

-- The class dim is 2 for batched input {N, C, ...}, 1 for unbatched {C}.
local function class_dim(input) return input:dim() == 1 and 1 or 2 end

-- -log_probs picked at 1-based class indices `target` (input shape minus the
-- class dim).
local function pick_nll(fname, log_probs, target)
  local cdim = class_dim(log_probs)
  local expected = log_probs:size()
  local num_classes = table.remove(expected, cdim)
  if not T.is_tensor(target) or target:dtype():match("^float") or
      target:dtype() == "bool" then
    error(("%s: target must be an integer tensor of class indices, got %s")
      :format(fname, T.is_tensor(target) and target:dtype() or type(target)), 3)
  end
  if "[" .. table.concat(expected, ", ") .. "]" ~= shape_str(target) then
    error(("%s: target of shape %s does not match input of shape %s (expected "
      .. "target shape [%s])"):format(fname, shape_str(target),
        shape_str(log_probs), table.concat(expected, ", ")), 3)
  end
  if target:numel() > 0 then
    local lo, hi = target:min():item(), target:max():item()
    if lo < 1 or hi > num_classes then
      error(("%s: target class %d is out of range 1..%d"):format(fname,
        lo < 1 and lo or hi, num_classes), 3)
    end
  end
  return -log_probs:gather(cdim, target:unsqueeze(cdim)):squeeze(cdim)
end

function F.nll_loss(input, target, opts)
  check_tensor("nll_loss", "input", input)
  return reduce("nll_loss", pick_nll("nll_loss", input, target),
    opts and opts.reduction)
end

-- cross_entropy(logits, target): target holds class indices (1-based, an
-- integer tensor) or class probabilities (a float tensor shaped as input).
function F.cross_entropy(input, target, opts)
  check_tensor("cross_entropy", "input", input)
  local reduction = opts and opts.reduction
  local log_probs = input:log_softmax(class_dim(input))
  if T.is_tensor(target) and target:dtype():match("^float") then
    if shape_str(input) ~= shape_str(target) then
      error(("cross_entropy: probability target of shape %s does not match "
        .. "input of shape %s"):format(shape_str(target), shape_str(input)), 2)
    end
    local loss = -(log_probs * target):sum(class_dim(input))
    return reduce("cross_entropy", loss, reduction)
  end
  return reduce("cross_entropy", pick_nll("cross_entropy", log_probs, target),
    reduction)
end

-- ---- Layers ----------------------------------------------------------------------

local Linear = Module:extend("Linear")
nn.Linear = Linear

-- Linear(in, out, {bias = true, dtype =}): weight {out, in}, PyTorch's init.
function Linear:init(in_features, out_features, opts)
  opts = check_opts("Linear", opts)
  check_int("Linear", "in_features", in_features)
  check_int("Linear", "out_features", out_features)
  self.in_features, self.out_features = in_features, out_features
  self.weight = T.empty({ out_features, in_features },
    { dtype = opts.dtype, requires_grad = true })
  if opts.bias ~= false then
    self.bias = T.empty({ out_features },
      { dtype = opts.dtype, requires_grad = true })
  end
  self:reset_parameters()
end

function Linear:reset_parameters()
  -- kaiming_uniform_ with a = sqrt(5) gives U(-1/sqrt(in), 1/sqrt(in)).
  local bound = self.in_features > 0 and 1 / math.sqrt(self.in_features) or 0
  init.uniform_(self.weight, -bound, bound)
  if self.bias ~= nil then init.uniform_(self.bias, -bound, bound) end
end

function Linear:forward(x)
  return F.linear(x, self.weight, self.bias)
end

function Linear:extra_repr()
  return ("in_features=%d, out_features=%d, bias=%s"):format(
    self.in_features, self.out_features, tostring(self.bias ~= nil))
end

local ReLU = Module:extend("ReLU")
nn.ReLU = ReLU
function ReLU:forward(x) return x:relu() end

local Tanh = Module:extend("Tanh")
nn.Tanh = Tanh
function Tanh:forward(x) return x:tanh() end

local Sigmoid = Module:extend("Sigmoid")
nn.Sigmoid = Sigmoid
function Sigmoid:forward(x) return x:sigmoid() end

local Dropout = Module:extend("Dropout")
nn.Dropout = Dropout
function Dropout:init(p)
  if type(p) == "table" then p = p.p end
  self.p = check_probability("Dropout", "p", p or 0.5)
end
function Dropout:forward(x) return T.dropout(x, self.p, self.training) end
function Dropout:extra_repr() return "p=" .. tostring(self.p) end

local function dim_layer(name, op)
  local cls = Module:extend(name)
  function cls:init(dim)
    if dim ~= nil and (math.type(dim) ~= "integer" or dim == 0) then
      error(("%s: dim must be a non-zero integer, got %s"):format(name,
        tostring(dim)), 3)
    end
    self.dim = dim or -1
  end
  function cls:forward(x)
    local y = op(x, self.dim) -- not a tail call: errors name the op
    return y
  end
  function cls:extra_repr() return "dim=" .. tostring(self.dim) end
  return cls
end
nn.Softmax = dim_layer("Softmax", function(x, dim)
  local y = x:softmax(dim)
  return y
end)
nn.LogSoftmax = dim_layer("LogSoftmax", function(x, dim)
  local y = x:log_softmax(dim)
  return y
end)

local Flatten = Module:extend("Flatten")
nn.Flatten = Flatten
function Flatten:init(start_dim, end_dim)
  self.start_dim, self.end_dim = start_dim or 2, end_dim or -1
end
function Flatten:forward(x) return x:flatten(self.start_dim, self.end_dim) end
function Flatten:extra_repr()
  return ("start_dim=%d, end_dim=%d"):format(self.start_dim, self.end_dim)
end

-- Sequential(m1, m2, ...) or Sequential({m1, m2, ...}): children "1", "2", ...
local Sequential = Module:extend("Sequential")
nn.Sequential = Sequential
function Sequential:init(...)
  local list = { ... }
  if #list == 1 and not is_module(list[1]) and type(list[1]) == "table" then
    list = list[1]
  end
  for i, m in ipairs(list) do
    if not is_module(m) then
      error(("Sequential: argument %d is not a Module (got %s)"):format(
        i, type(m)), 3)
    end
    self:add_module(tostring(i), m)
  end
end
function Sequential:get(i) return self._modules.values[tostring(i)] end
function Sequential:append(m)
  self:add_module(tostring(#self._modules.keys + 1), m)
  return self
end
function Sequential:forward(x, ...)
  for _, k in ipairs(self._modules.keys) do x = self._modules.values[k](x, ...) end
  return x
end
function Sequential.__len(self) return #self._modules.keys end
function Sequential.__index(self, key)
  if math.type(key) == "integer" then return self:get(key) end
  return Module.__index(self, key)
end

-- Embedding(num_embeddings, dim): lookups by 1-based integer index.
local Embedding = Module:extend("Embedding")
nn.Embedding = Embedding
function Embedding:init(num_embeddings, embedding_dim, opts)
  opts = check_opts("Embedding", opts)
  check_int("Embedding", "num_embeddings", num_embeddings, 1)
  check_int("Embedding", "embedding_dim", embedding_dim, 1)
  self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
  self.weight = T.randn({ num_embeddings, embedding_dim },
    { dtype = opts.dtype, requires_grad = true })
end

function Embedding:forward(indices)
  if not T.is_tensor(indices) or indices:dtype():match("^float") or
      indices:dtype() == "bool" then
    error(("Embedding: indices must be an integer tensor, got %s"):format(
      T.is_tensor(indices) and indices:dtype() or type(indices)), 2)
  end
  local n = indices:numel()
  local flat = indices:reshape({ n })
  if n > 0 and (flat:min():item() < 1 or
      flat:max():item() > self.num_embeddings) then
    local bad = {}
    for i = 1, n do
      local v = flat[i]
      if (v < 1 or v > self.num_embeddings) and #bad < 10 then
        bad[#bad + 1] = tostring(v)
      end
    end
    error(("Embedding: indices out of range 1..%d: %s"):format(
      self.num_embeddings, table.concat(bad, ", ")), 2)
  end
  local shape = indices:size()
  shape[#shape + 1] = self.embedding_dim
  return self.weight:index_select(1, flat):reshape(shape)
end

function Embedding:extra_repr()
  return ("%d, %d"):format(self.num_embeddings, self.embedding_dim)
end

-- LSTM(input_size, hidden_size, {num_layers = 1, bias = true,
-- batch_first = false, dropout = 0}), or LSTM(in, hidden, num_layers, {...})
-- as PyTorch's positional form. Parameters and gate order (i, f, g, o) as
-- PyTorch's, so state dicts carry over.
local LSTM = Module:extend("LSTM")
nn.LSTM = LSTM
function LSTM:init(input_size, hidden_size, opts, more)
  if type(opts) == "number" then
    local merged = { num_layers = opts }
    for k, v in pairs(more or {}) do merged[k] = v end
    opts = merged
  end
  opts = check_opts("LSTM", opts)
  check_int("LSTM", "input_size", input_size, 1)
  check_int("LSTM", "hidden_size", hidden_size, 1)
  local num_layers = opts.num_layers or 1
  check_int("LSTM", "num_layers", num_layers, 1)
  self.input_size, self.hidden_size = input_size, hidden_size
  self.num_layers = num_layers
  self.bias = opts.bias ~= false
  self.batch_first = opts.batch_first == true
  self.dropout = opts.dropout or 0
  check_probability("LSTM", "dropout", self.dropout)
  local H, o = hidden_size, { dtype = opts.dtype, requires_grad = true }
  for l = 0, num_layers - 1 do
    local in_l = l == 0 and input_size or H
    self:register_parameter("weight_ih_l" .. l, T.empty({ 4 * H, in_l }, o))
    self:register_parameter("weight_hh_l" .. l, T.empty({ 4 * H, H }, o))
    if self.bias then
      self:register_parameter("bias_ih_l" .. l, T.empty({ 4 * H }, o))
      self:register_parameter("bias_hh_l" .. l, T.empty({ 4 * H }, o))
    end
  end
  self:reset_parameters()
end

function LSTM:reset_parameters()
  local k = 1 / math.sqrt(self.hidden_size)
  for _, p in ipairs(self:parameters()) do init.uniform_(p, -k, k) end
end

-- forward(input, [{h0, c0}]) -> output, {h_n, c_n}. input is {seq, batch,
-- in} ({batch, seq, in} if batch_first) or unbatched {seq, in}; h0 and c0
-- are {num_layers, batch, H} ({num_layers, H} unbatched), zeros if absent.
function LSTM:forward(input, hx)
  check_tensor("LSTM", "input", input)
  if hx ~= nil and type(hx) ~= "table" then
    error(("LSTM: the state must be a table {h0, c0}, got %s"):format(
      type(hx)), 2)
  end
  local H, L = self.hidden_size, self.num_layers
  local unbatched = input:dim() == 2
  if (input:dim() ~= 2 and input:dim() ~= 3) or
      input:size(-1) ~= self.input_size then
    error(("LSTM: input of shape %s must be [seq, batch, %d]%s or [seq, %d]")
      :format(shape_str(input), self.input_size,
        self.batch_first and " ([batch, seq, ...] as batch_first)" or "",
        self.input_size), 2)
  end
  local x = input
  if unbatched then x = x:unsqueeze(2)
  elseif self.batch_first then x = x:transpose(1, 2) end
  local seq, batch = x:size(1), x:size(2)
  local state = {}
  for i = 1, 2 do
    local s = hx and hx[i]
    if s == nil then
      s = T.zeros({ L, batch, H }, { dtype = input:dtype(),
        device = input:device() })
    else
      check_tensor("LSTM", i == 1 and "h0" or "c0", s)
      local want = unbatched and ("[%d, %d]"):format(L, H)
        or ("[%d, %d, %d]"):format(L, batch, H)
      if shape_str(s) ~= want then
        error(("LSTM: %s of shape %s, expected %s"):format(
          i == 1 and "h0" or "c0", shape_str(s), want), 2)
      end
      if unbatched then s = s:unsqueeze(2) end
    end
    state[i] = s
  end
  local h_n, c_n = {}, {}
  for l = 0, L - 1 do
    local w_ih, w_hh = self["weight_ih_l" .. l], self["weight_hh_l" .. l]
    -- The input projection of all steps in one matrix product.
    local x2 = x:reshape({ seq * batch, x:size(3) })
    local proj
    if self.bias then
      proj = T.addmm(self["bias_ih_l" .. l] + self["bias_hh_l" .. l], x2,
        w_ih:t())
    else
      proj = x2:matmul(w_ih:t())
    end
    proj = proj:reshape({ seq, batch, 4 * H })
    local h, c = state[1]:select(1, l + 1), state[2]:select(1, l + 1)
    local outs = {}
    for t = 1, seq do
      local gates = T.addmm(proj:select(1, t), h, w_hh:t())
      local g = gates:chunk(4, 2)
      local i_g, f_g = g[1]:sigmoid(), g[2]:sigmoid()
      local c_g, o_g = g[3]:tanh(), g[4]:sigmoid()
      c = f_g * c + i_g * c_g
      h = o_g * c:tanh()
      outs[t] = h
    end
    x = T.stack(outs, 1)
    if l < L - 1 and self.dropout > 0 then
      x = T.dropout(x, self.dropout, self.training)
    end
    h_n[l + 1], c_n[l + 1] = h, c
  end
  local hn, cn = T.stack(h_n, 1), T.stack(c_n, 1)
  if unbatched then
    x, hn, cn = x:select(2, 1), hn:select(2, 1), cn:select(2, 1)
  elseif self.batch_first then
    x = x:transpose(1, 2)
  end
  return x, { hn, cn }
end

function LSTM:extra_repr()
  local s = ("%d, %d"):format(self.input_size, self.hidden_size)
  if self.num_layers ~= 1 then s = s .. ", num_layers=" .. self.num_layers end
  if not self.bias then s = s .. ", bias=false" end
  if self.batch_first then s = s .. ", batch_first=true" end
  if self.dropout ~= 0 then s = s .. ", dropout=" .. tostring(self.dropout) end
  return s
end

-- ---- Losses (modules over the functional forms) -------------------------------------

local function loss_class(name, fn)
  local cls = Module:extend(name)
  function cls:init(opts)
    check_opts(name, opts)
    self.reduction = (opts and opts.reduction) or "mean"
    reduce(name, T.zeros(1), self.reduction) -- validates it now
  end
  function cls:forward(input, target)
    return fn(input, target, { reduction = self.reduction })
  end
  function cls:extra_repr()
    return self.reduction == "mean" and "" or "reduction=" .. self.reduction
  end
  return cls
end
nn.MSELoss = loss_class("MSELoss", F.mse_loss)
nn.CrossEntropyLoss = loss_class("CrossEntropyLoss", F.cross_entropy)
nn.NLLLoss = loss_class("NLLLoss", F.nll_loss)

-- ---- nn.utils -----------------------------------------------------------------------

nn.utils = {}

local function param_list(params, fname)
  if is_module(params) then return params:parameters() end
  if T.is_tensor(params) then return { params } end
  if type(params) ~= "table" then
    error(("%s: params must be a module, a tensor or a list of tensors, got %s")
      :format(fname, type(params)), 3)
  end
  for i, p in ipairs(params) do
    if not T.is_tensor(p) then
      error(("%s: params[%d] is not a tensor (got %s)"):format(fname, i,
        type(p)), 3)
    end
  end
  return params
end

-- clip_grad_norm_(params, max_norm, [norm_type = 2]): scales the gradients
-- in place so that their joint norm is at most max_norm; returns the norm
-- before clipping, a number.
function nn.utils.clip_grad_norm_(params, max_norm, norm_type)
  norm_type = norm_type or 2
  local fname = "clip_grad_norm_"
  local list = param_list(params, fname)
  if type(max_norm) ~= "number" or not (max_norm >= 0) then
    error(("%s: max_norm must be a number >= 0, got %s"):format(fname,
      tostring(max_norm)), 2)
  end
  if type(norm_type) ~= "number" or not (norm_type > 0) then
    error(("%s: norm_type must be a number > 0, got %s"):format(fname,
      tostring(norm_type)), 2)
  end
  local grads = {}
  for _, p in ipairs(list) do
    if p.grad ~= nil then grads[#grads + 1] = p.grad end
  end
  if #grads == 0 then return 0.0 end
  local total = 0
  for _, g in ipairs(grads) do
    if norm_type == math.huge then
      total = math.max(total, g:abs():max():item())
    else
      total = total + g:abs():pow(norm_type):sum():item()
    end
  end
  if norm_type ~= math.huge then total = total ^ (1 / norm_type) end
  local coef = max_norm / (total + 1e-6)
  if coef < 1 then
    T.no_grad(function()
      for _, g in ipairs(grads) do g:mul_(coef) end
    end)
  end
  return total
end

function nn.utils.parameters_to_vector(params)
  local flat = {}
  for i, p in ipairs(param_list(params, "parameters_to_vector")) do flat[i] = p:reshape({ p:numel() }) end
  return T.cat(flat)
end

return nn
