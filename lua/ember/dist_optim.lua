-- ember.dist_optim: the distributed optimizer, as
-- torch.distributed.optim.DistributedOptimizer.
--
--   local opt = dist_optim.DistributedOptimizer(optim.SGD, param_rrefs,
--                                               {lr = 0.05})
--   dist_autograd.context(function(ctx)
--     ... dist_autograd.backward(ctx, {loss})
--     opt:step(ctx)
--   end)
--
-- param_rrefs holds one RRef per parameter, wherever it lives
-- (dist_optim.parameter_rrefs(module), or module:parameter_rrefs() called
-- on the module's owner). On every owner, one local optimizer of the given
-- class is made over its parameters; step(ctx) steps all of them at once,
-- each with the gradients the context collected on its worker (not .grad).
local rpc = require "ember.rpc"
local futures = require "ember.futures"
local dist_autograd = require "ember.dist_autograd"
local T = require "ember.tensor"

local dist_optim = {}

-- --- On each owner ---------------------------------------------------------------------

local LocalOptimizer = {}
LocalOptimizer.__index = LocalOptimizer

-- Made on the owner by the DistributedOptimizer: optim_class(params, opts)
-- over the values of param_rrefs (all owned here).
function dist_optim._new_local(optim_class, param_rrefs, opts)
  local params = {}
  for i, r in ipairs(param_rrefs) do
    local p = r:local_value()
    if not T.is_tensor(p) then
      error(("DistributedOptimizer: parameter %d is a %s, not a tensor"):format(
        i, type(p)), 0)
    end
    params[i] = p
  end
  return setmetatable({ params = params,
    optimizer = optim_class(params, opts) }, LocalOptimizer)
end

-- Steps with the context's gradients here: they are swapped into the
-- parameters' .grad for the step (a parameter the context has no gradient
-- for has none), and everything is put back after, whatever happens.
function LocalOptimizer:step(context_id)
  local grads = dist_autograd._grad_map(context_id)
  if grads == nil then
    error(("no distributed autograd context %s on this worker (it was " ..
      "closed, or the forward pass never came here)"):format(
      rpc._internal.id_text(context_id)), 0)
  end
  local hidden = {}
  for _, p in ipairs(self.params) do
    if grads:get(p) == nil and p.grad ~= nil then
      hidden[p] = p.grad
      p.grad = nil
    end
  end
  grads:swap_into_leaves()
  local ok, err = pcall(self.optimizer.step, self.optimizer)
  grads:swap_into_leaves()
  for p, g in pairs(hidden) do p.grad = g end
  if not ok then error(err, 0) end
  return true
end

-- How many parameters it steps (the caller waits for this to know it was
-- made).
function LocalOptimizer:size()
  return #self.params
end

-- --- On the caller ------------------------------------------------------------------------

local DistributedOptimizer = {}
DistributedOptimizer.__index = DistributedOptimizer
dist_optim.DistributedOptimizer_class = DistributedOptimizer

-- A remote error's message without its traceback.
local message_of = dist_autograd._message_of

local function is_rref(v)
  return type(v) == "table" and type(v.owner) == "function" and
    type(v.is_owner) == "function" and v.owner_id ~= nil
end

-- DistributedOptimizer(optim_class, param_rrefs [, opts]): optim_class is a
-- function (params, opts) -> optimizer reachable on every owner, such as
-- ember.optim.SGD or ember.optim.Adam.
function dist_optim.DistributedOptimizer(optim_class, param_rrefs, opts)
  if type(optim_class) ~= "function" then
    error(("DistributedOptimizer: optim_class must be an optimizer " ..
      "constructor such as optim.SGD, got %s"):format(type(optim_class)), 2)
  end
  if type(param_rrefs) ~= "table" or #param_rrefs == 0 then
    error("DistributedOptimizer: param_rrefs must be a non-empty list of " ..
      "RRefs to parameters", 2)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error(("DistributedOptimizer: opts must be a table, got %s"):format(
      type(opts)), 2)
  end
  local by_owner, owners = {}, {}
  for i, r in ipairs(param_rrefs) do
    if not is_rref(r) then
      error(("DistributedOptimizer: param_rrefs[%d] is not an RRef (got %s)")
        :format(i, T.is_tensor(r) and "a tensor; wrap it with rpc.RRef" or
          type(r)), 2)
    end
    local list = by_owner[r.owner_id]
    if list == nil then
      list = {}
      by_owner[r.owner_id] = list
      owners[#owners + 1] = r.owner_id
    end
    list[#list + 1] = r
  end
  table.sort(owners)
  local self = setmetatable({ owners = owners, optimizers = {} },
    DistributedOptimizer)
  local me = rpc.get_worker_info().id
  local made, made_by = {}, {}
  for _, owner in ipairs(owners) do
    if owner ~= me then
      local r = dist_autograd._without_context(rpc.remote, owner,
        dist_optim._new_local, { optim_class, by_owner[owner], opts or {} })
      self.optimizers[owner] = r
      made[#made + 1] = dist_autograd._without_context(function()
        return r:rpc_async():size()
      end)
      made_by[#made] = r:owner_name()
    end
  end
  if by_owner[me] ~= nil then
    local ok, result = pcall(dist_optim._new_local, optim_class, by_owner[me],
      opts)
    if not ok then
      error(("DistributedOptimizer: making the optimizer on this worker: %s")
        :format(tostring(result)), 2)
    end
    self.optimizers[me] = result
  end
  -- As PyTorch does: a bad option fails here, not at the first step.
  for i, f in ipairs(futures.collect_all(made):wait()) do
    local ok, err = pcall(f.wait, f)
    if not ok then
      error(("DistributedOptimizer: making the optimizer on worker '%s': %s")
        :format(made_by[i], message_of(err)), 2)
    end
  end
  return self
end

local function context_id(ctx)
  if type(ctx) == "table" and math.type(ctx.id) == "integer" then return ctx.id end
  if math.type(ctx) == "integer" then return ctx end
  error(("DistributedOptimizer:step: expected a context or its id, got %s")
    :format(type(ctx)), 3)
end

-- opt:step(ctx): steps the optimizers of all owners concurrently with the
-- gradients of context ctx (the object or its id); raises the first
-- failure, naming the worker.
function DistributedOptimizer:step(ctx)
  local id = context_id(ctx)
  local me = rpc.get_worker_info().id
  local calls, names = {}, {}
  for _, owner in ipairs(self.owners) do
    if owner ~= me then
      local r = self.optimizers[owner]
      calls[#calls + 1] = dist_autograd._without_context(function()
        return r:rpc_async():step(id)
      end)
      names[#calls] = r:owner_name()
    end
  end
  local local_error
  if self.optimizers[me] ~= nil then
    local ok, err = pcall(self.optimizers[me].step, self.optimizers[me], id)
    if not ok then local_error = err end
  end
  if #calls > 0 then
    for i, f in ipairs(futures.collect_all(calls):wait()) do
      local ok, err = pcall(f.wait, f)
      if not ok then
        error(("DistributedOptimizer:step: the optimizer on worker '%s' " ..
          "failed: %s"):format(names[i], message_of(err)), 2)
      end
    end
  end
  if local_error ~= nil then
    error("DistributedOptimizer:step: " .. tostring(local_error), 2)
  end
end

-- dist_optim.parameter_rrefs(module_or_list): one rpc.RRef per parameter,
-- owned here (the tutorial's _parameter_rrefs).
function dist_optim.parameter_rrefs(params)
  if type(params) == "table" and type(params.parameters) == "function" then
    params = params:parameters()
  end
  if type(params) ~= "table" then
    error(("parameter_rrefs: expected a module or a list of tensors, got %s")
      :format(type(params)), 2)
  end
  local list = {}
  for i, p in ipairs(params) do
    if not T.is_tensor(p) then
      error(("parameter_rrefs: item %d is a %s, not a tensor"):format(i, type(p)), 2)
    end
    list[i] = rpc.RRef(p)
  end
  return list
end

return dist_optim
