-- ember.nn.module: the Module base class of ember.nn — registration of
-- parameters, buffers and submodules in assignment order, traversal,
-- train/eval, state dicts and printing. ember.nn re-exports it as nn.Module.
local T = require "ember.tensor"

local function shape_str(t)
  return "[" .. table.concat(t:size(), ", ") .. "]"
end

-- ---- Ordered dictionaries (registration order matters) -----------------------

local function odict() return { keys = {}, values = {} } end

local function odict_set(d, key, value)
  if d.values[key] == nil then d.keys[#d.keys + 1] = key end
  d.values[key] = value
end

local function odict_remove(d, key)
  if d.values[key] == nil then return end
  d.values[key] = nil
  for i, k in ipairs(d.keys) do
    if k == key then table.remove(d.keys, i) break end
  end
end

-- A map whose pairs() runs in insertion order (state_dict's result).
local function ordered_map(keys, values)
  local order = { table.unpack(keys) }
  return setmetatable(values, {
    __pairs = function(t)
      local i = 0
      return function()
        i = i + 1
        local k = order[i]
        if k ~= nil then return k, t[k] end
      end, t, nil
    end,
    keys = order,
  })
end

-- ---- Module ----------------------------------------------------------------------

local Module = { __name = "Module", __module_class = true }

local function is_module(v)
  local mt = type(v) == "table" and getmetatable(v)
  return mt and rawget(v, "_modules") ~= nil and mt.__module_class == true
    or false
end

local function is_parameter(v)
  return T.is_tensor(v) and v.requires_grad and v.is_leaf
end

-- Instances keep parameters, buffers and submodules out of their raw table so
-- that every assignment reaches __newindex and lookups find them here.
function Module.__index(self, key)
  local v = rawget(self, "_parameters").values[key]
  if v ~= nil then return v end
  v = rawget(self, "_buffers").values[key]
  if v ~= nil then return v end
  v = rawget(self, "_modules").values[key]
  if v ~= nil then return v end
  return getmetatable(self)[key]
end

function Module.__newindex(self, key, value)
  local params, buffers, modules = rawget(self, "_parameters"),
    rawget(self, "_buffers"), rawget(self, "_modules")
  if params.values[key] ~= nil then
    if value ~= nil and not is_parameter(value) then
      error(("cannot assign %s to parameter '%s': expected a leaf tensor that "
        .. "requires grad, or nil"):format(
          T.is_tensor(value) and "a tensor that is not a leaf requiring grad"
          or type(value), key), 2)
    end
    if value == nil then odict_remove(params, key)
    else odict_set(params, key, value) end
  elseif buffers.values[key] ~= nil and (value == nil or T.is_tensor(value)) then
    if value == nil then odict_remove(buffers, key)
    else odict_set(buffers, key, value) end
  elseif modules.values[key] ~= nil and (value == nil or is_module(value)) then
    if value == nil then odict_remove(modules, key)
    else odict_set(modules, key, value) end
  elseif is_module(value) then
    odict_set(modules, key, value)
  elseif is_parameter(value) then
    odict_set(params, key, value)
  else
    rawset(self, key, value)
  end
end

function Module.__call(self, ...)
  return self:forward(...)
end

local function construct(cls, ...)
  local self = setmetatable({ _parameters = odict(), _buffers = odict(),
    _modules = odict(), training = true }, cls)
  self:init(...)
  return self
end

setmetatable(Module, { __call = construct })
Module.new = function(...) return construct(Module, ...) end

-- Cls:extend(name): a subclass; Sub(...) and Sub.new(...) construct one and
-- call its init(...).
function Module.extend(parent, name)
  if type(name) ~= "string" then
    error("extend: the class name must be a string, got " .. type(name), 2)
  end
  local cls = {}
  -- Metamethods are looked up raw, so each class carries its own copies.
  for k, v in pairs(parent) do
    if type(k) == "string" and k:sub(1, 2) == "__" then cls[k] = v end
  end
  cls.__name = name
  cls.super = parent
  cls.new = function(...) return construct(cls, ...) end
  return setmetatable(cls, { __index = parent, __call = construct })
end

function Module:init() end

function Module:forward()
  error(("%s: forward is not defined"):format(self:_get_name()), 2)
end

function Module:_get_name()
  return getmetatable(self).__name
end

-- Names of parameters, buffers and children are non-empty strings.
local function check_name(fname, name)
  if type(name) ~= "string" or name == "" then
    error(("%s: the name must be a non-empty string, got %s"):format(fname,
      tostring(name)), 3)
  end
end

function Module:register_parameter(name, t)
  check_name("register_parameter", name)
  if t ~= nil and not T.is_tensor(t) then
    error(("register_parameter: '%s' must be a tensor or nil, got %s"):format(
      name, type(t)), 2)
  end
  if t ~= nil and not t.is_leaf then
    error(("register_parameter: '%s' must be a leaf tensor (use detach())")
      :format(name), 2)
  end
  if t == nil then odict_remove(self._parameters, name) return end
  if not t.requires_grad then t:requires_grad_(true) end
  odict_set(self._parameters, name, t)
end

-- Buffers are state that is saved and loaded but not trained.
function Module:register_buffer(name, t)
  check_name("register_buffer", name)
  if t ~= nil and not T.is_tensor(t) then
    error(("register_buffer: '%s' must be a tensor or nil, got %s"):format(
      name, type(t)), 2)
  end
  if t == nil then odict_remove(self._buffers, name)
  else odict_set(self._buffers, name, t) end
end

function Module:add_module(name, m)
  check_name("add_module", name)
  if m ~= nil and not is_module(m) then
    error(("add_module: '%s' must be a Module, got %s"):format(
      tostring(name), type(m)), 2)
  end
  if m == nil then odict_remove(self._modules, name)
  else odict_set(self._modules, name, m) end
end
Module.register_module = Module.add_module

-- Calls visit(prefix, module) for this module and every descendant, each
-- module once, depth first in registration order.
local function walk(m, prefix, seen, visit)
  if seen[m] then return end
  seen[m] = true
  visit(prefix, m)
  for _, name in ipairs(m._modules.keys) do
    walk(m._modules.values[name], prefix .. name .. ".", seen, visit)
  end
end

-- named_X() return iterators over (name, value) in registration order:
--   for name, p in model:named_parameters() do ... end
local function named(self, field)
  local list, seen = {}, {}
  walk(self, "", {}, function(prefix, m)
    local d = m[field]
    for _, k in ipairs(d.keys) do
      local v = d.values[k]
      if not seen[v] then
        seen[v] = true
        list[#list + 1] = { prefix .. k, v }
      end
    end
  end)
  local i = 0
  return function()
    i = i + 1
    local e = list[i]
    if e then return e[1], e[2] end
  end
end

function Module:named_parameters() return named(self, "_parameters") end
function Module:named_buffers() return named(self, "_buffers") end

-- parameters(): a list of the parameter tensors (recursive, no duplicates).
function Module:parameters()
  local list = {}
  for _, p in self:named_parameters() do list[#list + 1] = p end
  return list
end

-- One rpc.RRef per parameter, owned by this worker: what a
-- DistributedOptimizer takes (the tutorial's _parameter_rrefs). On a module
-- held by an RRef: rref:rpc_sync():parameter_rrefs().
function Module:parameter_rrefs()
  return require("ember.dist_optim").parameter_rrefs(self)
end

function Module:buffers()
  local list = {}
  for _, b in self:named_buffers() do list[#list + 1] = b end
  return list
end

function Module:named_children()
  local i, keys, values = 0, self._modules.keys, self._modules.values
  return function()
    i = i + 1
    if keys[i] ~= nil then return keys[i], values[keys[i]] end
  end
end

function Module:children()
  local list = {}
  for _, m in self:named_children() do list[#list + 1] = m end
  return list
end

-- named_modules(): this module (named "") and every descendant.
function Module:named_modules()
  local list = {}
  walk(self, "", {}, function(prefix, m)
    list[#list + 1] = { prefix:sub(1, -2), m }
  end)
  local i = 0
  return function()
    i = i + 1
    if list[i] then return list[i][1], list[i][2] end
  end
end

function Module:modules()
  local list = {}
  for _, m in self:named_modules() do list[#list + 1] = m end
  return list
end

function Module:apply(fn)
  if type(fn) ~= "function" then
    error("apply: expected a function(module), got " .. type(fn), 2)
  end
  for _, m in ipairs(self:modules()) do fn(m) end
  return self
end

function Module:train(mode)
  if mode == nil then mode = true end
  for _, m in ipairs(self:modules()) do rawset(m, "training", mode and true) end
  return self
end

function Module:eval() return self:train(false) end

-- zero_grad(): drops the gradients (PyTorch's set_to_none=True).
function Module:zero_grad()
  for _, p in ipairs(self:parameters()) do p.grad = nil end
end

function Module:num_parameters()
  local n = 0
  for _, p in ipairs(self:parameters()) do n = n + p:numel() end
  return n
end

-- state_dict(): name -> detached tensor sharing the module's storage
-- (references, as PyTorch's); pairs() over it runs in registration order.
function Module:state_dict()
  local keys, values = {}, {}
  walk(self, "", {}, function(prefix, m)
    for _, field in ipairs({ "_parameters", "_buffers" }) do
      local d = m[field]
      for _, k in ipairs(d.keys) do
        local name = prefix .. k
        if values[name] == nil then keys[#keys + 1] = name end
        values[name] = d.values[k]:detach()
      end
    end
  end)
  return ordered_map(keys, values)
end

-- load_state_dict(sd, {strict = true}): copies sd's tensors into this
-- module's. Returns {missing_keys =, unexpected_keys =} (both empty when
-- strict, which raises instead).
function Module:load_state_dict(sd, opts)
  if type(sd) ~= "table" then
    error("load_state_dict: state_dict must be a table, got " .. type(sd), 2)
  end
  local strict = not (opts and opts.strict == false)
  local own = self:state_dict()
  local own_keys = getmetatable(own).keys
  local missing, unexpected, mismatched = {}, {}, {}
  for _, k in ipairs(own_keys) do
    local v = rawget(sd, k)
    if v == nil then
      missing[#missing + 1] = k
    elseif not T.is_tensor(v) then
      mismatched[#mismatched + 1] = ("'%s' is a %s, not a tensor"):format(
        k, type(v))
    elseif shape_str(v) ~= shape_str(own[k]) then
      mismatched[#mismatched + 1] = ("'%s': shape %s in the state_dict, %s in "
        .. "the module"):format(k, shape_str(v), shape_str(own[k]))
    end
  end
  for k in next, sd do
    if own[k] == nil then unexpected[#unexpected + 1] = tostring(k) end
  end
  table.sort(unexpected)
  local problems = {}
  if #mismatched > 0 then
    problems[#problems + 1] = "size mismatch: " .. table.concat(mismatched, "; ")
  end
  if strict and #missing > 0 then
    problems[#problems + 1] = "missing keys: " .. table.concat(missing, ", ")
  end
  if strict and #unexpected > 0 then
    problems[#problems + 1] = "unexpected keys: " ..
      table.concat(unexpected, ", ")
  end
  if #problems > 0 then
    error(("load_state_dict: error(s) loading into %s: %s"):format(
      self:_get_name(), table.concat(problems, "; ")), 2)
  end
  T.no_grad(function()
    for _, k in ipairs(own_keys) do
      local v = rawget(sd, k)
      if v ~= nil then own[k]:copy_(v) end
    end
  end)
  return { missing_keys = missing, unexpected_keys = unexpected }
end

-- to(dtype) / to("cuda") / to({dtype =, device =}): converts floating
-- parameters and buffers to the dtype and moves every parameter and buffer to
-- the device. Parameters become new tensors (a tensor cannot change dtype or
-- device in place), so build optimizers after.
local function is_device(what)
  return what == "cpu" or (type(what) == "string" and what:match("^cuda") ~= nil)
end

function Module:to(what)
  local dtype, device
  if type(what) == "table" then dtype, device = what.dtype, what.device
  elseif is_device(what) then device = what
  else dtype = what end
  if device ~= nil then device = T.device(device) end
  -- The converted copy of t, or nil when it already is what is asked.
  local function convert(t)
    local want = {
      dtype = dtype ~= nil and t:dtype():match("^float") and dtype or nil,
      device = device }
    if (want.dtype == nil or want.dtype == t:dtype()) and
        (device == nil or device == t:device()) then
      return nil
    end
    return t:detach():to(want)
  end
  -- One copy per tensor, so that a tensor two modules share (tied weights)
  -- stays shared.
  local done = {}
  local function converted(t, is_parameter)
    if done[t] == nil then
      local moved = convert(t)
      if moved ~= nil and is_parameter then
        moved = moved:requires_grad_(t.requires_grad)
      end
      done[t] = moved or false
    end
    return done[t] or nil
  end
  for _, m in ipairs(self:modules()) do
    for _, k in ipairs(m._parameters.keys) do
      local moved = converted(m._parameters.values[k], true)
      if moved ~= nil then m._parameters.values[k] = moved end
    end
    for _, k in ipairs(m._buffers.keys) do
      local moved = converted(m._buffers.values[k], false)
      if moved ~= nil then m._buffers.values[k] = moved end
    end
  end
  return self
end
function Module:cuda(index)
  return self:to("cuda:" .. (index or 0))
end
function Module:cpu() return self:to("cpu") end
function Module:double() return self:to("float64") end
function Module:float() return self:to("float32") end

function Module:extra_repr() return "" end

function Module.__tostring(self)
  local name, extra = self:_get_name(), self:extra_repr()
  if #self._modules.keys == 0 then return name .. "(" .. extra .. ")" end
  local lines = { name .. "(" }
  if extra ~= "" then lines[#lines + 1] = "  " .. extra end
  for _, k in ipairs(self._modules.keys) do
    local child = tostring(self._modules.values[k]):gsub("\n", "\n  ")
    lines[#lines + 1] = ("  (%s): %s"):format(k, child)
  end
  lines[#lines + 1] = ")"
  return table.concat(lines, "\n")
end

Module.is_module = is_module
return Module
