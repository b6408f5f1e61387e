-- ember.optim: SGD and Adam with PyTorch 1.13's update rules.
--
--   local opt = optim.Adam(model:parameters(), {lr = 1e-2})
--   opt:zero_grad(); loss:backward(); opt:step()
--
-- `params` is a list of tensors (a module's parameters()), a module, or a
-- list of parameter groups {params = {...}, lr = ..., ...} whose options
-- override the defaults. Changing opt.param_groups[i].lr takes effect on
-- the next step.
local T = require "ember.tensor"

local optim = {}

local function is_module(v)
  return type(v) == "table" and not T.is_tensor(v) and
    type(v.parameters) == "function" and rawget(v, "_modules") ~= nil
end

-- ---- Optimizer ---------------------------------------------------------------------

local Optimizer = {}
Optimizer.__index = Optimizer
optim.Optimizer = Optimizer

local function check_params(fname, list, seen)
  if type(list) ~= "table" or T.is_tensor(list) then
    error(("%s: params must be a list of tensors, got %s"):format(
      fname, T.is_tensor(list) and "a tensor" or type(list)), 5)
  end
  for i, p in ipairs(list) do
    if not T.is_tensor(p) then
      error(("%s: params[%d] is not a tensor (got %s)"):format(
        fname, i, type(p)), 5)
    end
    if not p.requires_grad then
      error(("%s: params[%d] does not require grad"):format(fname, i), 5)
    end
    if not p.is_leaf then
      error(("%s: params[%d] is not a leaf tensor; an optimizer cannot "
        .. "update it"):format(fname, i), 5)
    end
    if seen[p] then
      error(("%s: params[%d] appears more than once"):format(fname, i), 5)
    end
    seen[p] = true
  end
end

function Optimizer:add_param_group(group)
  local fname = self.name
  if type(group) ~= "table" or T.is_tensor(group) then
    error(("%s:add_param_group: expected a table {params = ..., [options]}, "
      .. "got %s"):format(fname, T.is_tensor(group) and "a tensor" or
        type(group)), 2)
  end
  if is_module(group) then group = { params = group:parameters() } end
  local params = group.params
  if is_module(params) then params = params:parameters() end
  if T.is_tensor(params) then params = { params } end
  local copy = {}
  for k, v in pairs(group) do copy[k] = v end
  copy.params = {}
  for i, p in ipairs(params or {}) do copy.params[i] = p end
  local seen = {}
  for _, g in ipairs(self.param_groups) do
    for _, p in ipairs(g.params) do seen[p] = true end
  end
  check_params(fname, copy.params, seen)
  for k, v in pairs(self.defaults) do
    if copy[k] == nil then copy[k] = v end
  end
  self:_check_group(copy)
  self.param_groups[#self.param_groups + 1] = copy
end

local function check_opts(name, opts)
  if opts ~= nil and type(opts) ~= "table" then
    error(("%s: options must be a table, got %s"):format(name, type(opts)), 3)
  end
  return opts or {}
end

local function new_optimizer(cls, name, params, defaults)
  local self = setmetatable({ name = name, defaults = defaults,
    param_groups = {}, state = {} }, cls)
  if is_module(params) then params = params:parameters() end
  if T.is_tensor(params) then params = { params } end
  if type(params) ~= "table" then
    error(("%s: params must be a list of tensors or of parameter groups, "
      .. "got %s"):format(name, type(params)), 3)
  end
  if #params == 0 then
    error(("%s: got an empty parameter list"):format(name), 3)
  end
  if type(params[1]) == "table" and not T.is_tensor(params[1]) and
      not is_module(params[1]) then
    for _, g in ipairs(params) do self:add_param_group(g) end
  else
    self:add_param_group({ params = params })
  end
  return self
end

-- zero_grad([set_to_none = true]): drops gradients, or zeroes them in place.
function Optimizer:zero_grad(set_to_none)
  for _, g in ipairs(self.param_groups) do
    for _, p in ipairs(g.params) do
      if set_to_none == false then
        local grad = p.grad
        if grad ~= nil then T.no_grad(grad.zero_, grad) end
      else
        p.grad = nil
      end
    end
  end
end

-- step([closure]): one update of every parameter that has a gradient.
-- closure, if given, re-evaluates the loss (with grad on) and returns it.
function Optimizer:step(closure)
  if closure ~= nil and type(closure) ~= "function" then
    error(("%s:step: closure must be a function, got %s"):format(self.name,
      type(closure)), 2)
  end
  local loss
  if closure ~= nil then loss = T.enable_grad(closure) end
  T.no_grad(function()
    for _, group in ipairs(self.param_groups) do
      for _, p in ipairs(group.params) do
        local grad = p.grad
        if grad ~= nil then
          local state = self.state[p]
          if state == nil then
            state = {}
            self.state[p] = state
          end
          self:_update(p, grad, state, group)
        end
      end
    end
  end)
  return loss
end

-- state_dict(): {state = {[i] = {...}}, param_groups = {{..., params = {i}}}}
-- with parameters numbered 1.. across groups, as PyTorch does (0..).
function Optimizer:state_dict()
  local index, n, groups, state = {}, 0, {}, {}
  for gi, g in ipairs(self.param_groups) do
    local packed = {}
    for k, v in pairs(g) do
      if k ~= "params" then packed[k] = v end
    end
    packed.params = {}
    for _, p in ipairs(g.params) do
      n = n + 1
      index[p] = n
      packed.params[#packed.params + 1] = n
    end
    groups[gi] = packed
  end
  for p, s in pairs(self.state) do
    if index[p] ~= nil then state[index[p]] = s end
  end
  return { state = state, param_groups = groups }
end

local function copy_value(v)
  if T.is_tensor(v) then return v:clone() end
  if type(v) == "table" then
    local c = {}
    for k, x in pairs(v) do c[k] = copy_value(x) end
    return c
  end
  return v
end

function Optimizer:load_state_dict(sd)
  local fname = self.name .. ":load_state_dict"
  if type(sd) ~= "table" or type(sd.param_groups) ~= "table" then
    error(fname .. ": expected a table with state and param_groups", 2)
  end
  if #sd.param_groups ~= #self.param_groups then
    error(("%s: the state_dict has %d parameter groups, the optimizer %d")
      :format(fname, #sd.param_groups, #self.param_groups), 2)
  end
  if sd.state ~= nil and type(sd.state) ~= "table" then
    error(fname .. ": state must be a table, got " .. type(sd.state), 2)
  end
  local by_index = {}
  for gi, g in ipairs(self.param_groups) do
    local saved = sd.param_groups[gi]
    if type(saved) ~= "table" or type(saved.params) ~= "table" then
      error(("%s: param_groups[%d] must be a table with a params list, got %s")
        :format(fname, gi, type(saved)), 2)
    end
    if #saved.params ~= #g.params then
      error(("%s: parameter group %d has %d parameters in the state_dict, %d "
        .. "in the optimizer"):format(fname, gi, #saved.params, #g.params), 2)
    end
    for i, p in ipairs(g.params) do by_index[saved.params[i]] = p end
  end
  self.state = {}
  for i, s in pairs(sd.state or {}) do
    local p = by_index[i]
    if p ~= nil then self.state[p] = copy_value(s) end
  end
  for gi, g in ipairs(self.param_groups) do
    for k, v in pairs(sd.param_groups[gi]) do
      if k ~= "params" then g[k] = copy_value(v) end
    end
  end
end

local function check_number(fname, what, v, lo, hi)
  -- NaN fails `v >= lo`: it is no learning rate.
  if type(v) ~= "number" or not (v >= lo) or (hi ~= nil and v >= hi) then
    error(("%s: invalid %s %s (must be %s)"):format(fname, what,
      tostring(v), hi and ("in [%s, %s)"):format(lo, hi) or ">= " .. lo), 6)
  end
end

-- ---- SGD --------------------------------------------------------------------------

local SGD = setmetatable({}, { __index = Optimizer })
SGD.__index = SGD
optim.SGD_class = SGD

-- SGD(params, {lr =, momentum = 0, dampening = 0, weight_decay = 0,
-- nesterov = false, maximize = false})
function optim.SGD(params, opts)
  opts = check_opts("SGD", opts)
  local defaults = { lr = opts.lr, momentum = opts.momentum or 0,
    dampening = opts.dampening or 0, weight_decay = opts.weight_decay or 0,
    nesterov = opts.nesterov or false, maximize = opts.maximize or false }
  return new_optimizer(SGD, "SGD", params, defaults)
end

function SGD:_check_group(g)
  if g.lr == nil then error("SGD: lr is required (e.g. {lr = 0.01})", 5) end
  check_number("SGD", "lr", g.lr, 0)
  check_number("SGD", "momentum", g.momentum, 0)
  check_number("SGD", "dampening", g.dampening, 0)
  check_number("SGD", "weight_decay", g.weight_decay, 0)
  if g.nesterov and (g.momentum <= 0 or g.dampening ~= 0) then
    error("SGD: nesterov momentum needs momentum > 0 and dampening = 0", 5)
  end
end

function SGD:_update(p, grad, state, g)
  local d_p = g.maximize and -grad or grad
  if g.weight_decay ~= 0 then d_p = d_p:add(p, g.weight_decay) end
  if g.momentum ~= 0 then
    local buf = state.momentum_buffer
    if buf == nil then
      buf = d_p:detach():clone()
      state.momentum_buffer = buf
    else
      buf:mul_(g.momentum):add_(d_p, 1 - g.dampening)
    end
    d_p = g.nesterov and d_p:add(buf, g.momentum) or buf
  end
  p:add_(d_p, -g.lr)
end

-- ---- Adam -------------------------------------------------------------------------

local Adam = setmetatable({}, { __index = Optimizer })
Adam.__index = Adam
optim.Adam_class = Adam

-- Adam(params, {lr = 1e-3, betas = {0.9, 0.999}, eps = 1e-8,
-- weight_decay = 0, amsgrad = false, maximize = false})
function optim.Adam(params, opts)
  opts = check_opts("Adam", opts)
  local defaults = { lr = opts.lr or 1e-3, betas = opts.betas or { 0.9, 0.999 },
    eps = opts.eps or 1e-8, weight_decay = opts.weight_decay or 0,
    amsgrad = opts.amsgrad or false, maximize = opts.maximize or false }
  return new_optimizer(Adam, "Adam", params, defaults)
end

function Adam:_check_group(g)
  check_number("Adam", "lr", g.lr, 0)
  check_number("Adam", "eps", g.eps, 0)
  if type(g.betas) ~= "table" then
    error("Adam: betas must be a table {beta1, beta2}", 5)
  end
  check_number("Adam", "beta1", g.betas[1], 0, 1)
  check_number("Adam", "beta2", g.betas[2], 0, 1)
  check_number("Adam", "weight_decay", g.weight_decay, 0)
end

function Adam:_update(p, grad, state, g)
  if g.maximize then grad = -grad end
  if state.step == nil then
    state.step = 0
    state.exp_avg = T.zeros_like(p)
    state.exp_avg_sq = T.zeros_like(p)
    if g.amsgrad then state.max_exp_avg_sq = T.zeros_like(p) end
  end
  local beta1, beta2 = g.betas[1], g.betas[2]
  state.step = state.step + 1
  if g.weight_decay ~= 0 then grad = grad:add(p, g.weight_decay) end
  state.exp_avg:mul_(beta1):add_(grad, 1 - beta1)
  state.exp_avg_sq:mul_(beta2):addcmul_(grad, grad, 1 - beta2)
  local bias_correction1 = 1 - beta1 ^ state.step
  local bias_correction2 = 1 - beta2 ^ state.step
  local step_size = g.lr / bias_correction1
  local second = state.exp_avg_sq
  if g.amsgrad then
    if state.max_exp_avg_sq == nil then
      state.max_exp_avg_sq = T.zeros_like(p)
    end
    state.max_exp_avg_sq:copy_(T.maximum(state.max_exp_avg_sq, second))
    second = state.max_exp_avg_sq
  end
  local denom = (second:sqrt() / math.sqrt(bias_correction2)):add_(g.eps)
  p:addcdiv_(state.exp_avg, denom, -step_size)
end

return optim
