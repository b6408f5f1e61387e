-- ember.tensor: dense tensors on the CPU and CUDA devices, with autograd.
--
--   local T = require "ember.tensor"
--   local x = T.randn(2, 3, {requires_grad = true})
--   local y = (x * 2):sum()
--   y:backward()                -- x.grad is 2 everywhere
--
-- The C core (core/tensor*.c, bound in core/lua_tensor.c) does the work; this
-- module adds the Lua sugar: shapes as tables or varargs, option tables,
-- dtype shorthands, printing, and a few ops composed from others. Dims and
-- indices are 1-based, as everywhere in ember.
local core = require "ember.core"
local format = require "ember.tensor_format"

local C = core.tensor
local T = {}
local methods = {}

local function is_tensor(x)
  return C.is_tensor(x)
end
T.is_tensor = is_tensor

-- Splits `...` into a shape table and an options table: sizes may come as
-- varargs (2, 3) or one table ({2, 3}); a trailing table with no array
-- part holds options ({dtype = "float64"}).
local function shape_and_options(fname, ...)
  local n = select("#", ...)
  local last = n > 0 and select(n, ...) or nil
  local opts
  -- {} alone is the shape of a 0-dim tensor; after sizes it is options.
  if type(last) == "table" and not is_tensor(last) and last[1] == nil and
      (next(last) ~= nil or n > 1) then
    opts, n = last, n - 1
  end
  local first = ...
  if n == 1 and type(first) == "table" then return first, opts or {} end
  local shape = {}
  for i = 1, n do
    local size = select(i, ...)
    if math.type(size) ~= "integer" then
      error(("%s: size %d must be an integer, got %s"):format(
        fname, i, tostring(size)), 3)
    end
    shape[i] = size
  end
  return shape, opts or {}
end

-- The sizes of a new tensor: integers >= 0 (a shape given as a table is
-- checked here too, so the error names the function and the size).
local function check_sizes(fname, shape)
  if type(shape) ~= "table" then
    error(("%s: the shape must be a table or sizes, got %s"):format(fname,
      type(shape)), 3)
  end
  for i = 1, #shape do
    local size = shape[i]
    if math.type(size) ~= "integer" or size < 0 then
      error(("%s: size %d must be an integer >= 0, got %s"):format(fname, i,
        tostring(size)), 3)
    end
  end
  return shape
end

local function check_options(fname, opts)
  if type(opts) ~= "table" then
    error(("%s: options must be a table, got %s"):format(fname, type(opts)), 3)
  end
  return opts
end

-- A 1-based dim of t (negative counts from the end), checked for ops
-- composed in Lua so that the error names them.
local function check_dim(fname, t, dim, what)
  local n = C.dim(t)
  if math.type(dim) ~= "integer" or dim == 0 or dim > n or dim < -n then
    error(("%s: %s must be a dimension from 1 to %d (or -%d to -1), got %s")
      :format(fname, what or "dim", n, n, tostring(dim)), 3)
  end
  return dim
end

local function check_tensor(fname, t, what)
  if not C.is_tensor(t) then
    error(("%s: %s must be a tensor, got %s"):format(fname, what or "input",
      C.is_closed(t) and "a closed tensor" or type(t)), 3)
  end
  return t
end

local function apply_options(t, opts)
  if opts.requires_grad then C.requires_grad_(t, true) end
  return t
end

-- The device option as a name the core knows ("cpu", "cuda", "cuda:1");
-- nil stays nil (the CPU, or the tensor's own device for `to`).
local function check_device(opts, fname)
  local device = opts.device
  if device == nil then return nil end
  if math.type(device) == "integer" then device = "cuda:" .. device end
  if type(device) ~= "string" then
    error(("%s: device must be a string such as 'cpu' or 'cuda:0', got %s")
      :format(fname, type(device)), 3)
  end
  local ok, name = pcall(C.check_device, device)
  if not ok then error(("%s: %s"):format(fname, name), 3) end
  return name
end

-- t on the device the options name (t itself when it is there already).
local function placed(t, device)
  if device == nil then return t end
  return C.to(t, nil, false, device)
end

-- ---- Creation --------------------------------------------------------------

local function filled(fname, value)
  return function(...)
    local shape, opts = shape_and_options(fname, ...)
    check_sizes(fname, shape)
    local device = check_device(opts, fname)
    return apply_options(C.full(shape, value, opts.dtype, device), opts)
  end
end

T.zeros = filled("zeros", 0)
T.ones = filled("ones", 1)
T.empty = filled("empty", 0)

-- The dtype PyTorch infers from a fill value.
local function dtype_of_value(value)
  if type(value) == "boolean" then return "bool" end
  if math.type(value) == "integer" then return "int64" end
  return "float32"
end

function T.full(shape, value, opts)
  opts = check_options("full", opts or {})
  if type(shape) ~= "table" then
    error("full: shape must be a table, got " .. type(shape), 2)
  end
  check_sizes("full", shape)
  if type(value) ~= "number" and type(value) ~= "boolean" then
    error("full: value must be a number or boolean, got " .. type(value), 2)
  end
  local device = check_device(opts, "full")
  local dtype = opts.dtype or dtype_of_value(value)
  if type(value) == "boolean" then value = value and 1 or 0 end
  return apply_options(C.full(shape, value, dtype, device), opts)
end

local function random(fname, fill)
  return function(...)
    local shape, opts = shape_and_options(fname, ...)
    check_sizes(fname, shape)
    local device = check_device(opts, fname)
    return apply_options(fill(shape, opts.dtype, device), opts)
  end
end

T.rand = random("rand", C.rand)
T.randn = random("randn", C.randn)

-- tensor(data, opts): from nested tables of numbers or booleans, a number
-- (a 0-dim tensor) or a tensor (a copy).
function T.tensor(data, opts)
  opts = check_options("tensor", opts or {})
  local device = check_device(opts, "tensor")
  local t
  if is_tensor(data) then
    t = C.to(C.detach(data), opts.dtype or C.dtype(data), true)
  elseif type(data) == "table" then
    t = C.from_table(data, opts.dtype)
  elseif type(data) == "number" or type(data) == "boolean" then
    t = C.from_table({ data }, opts.dtype):reshape({})
  else
    error("tensor: expected a table, number, boolean or tensor, got " ..
      type(data), 2)
  end
  return apply_options(placed(t, device), opts)
end

-- arange(end) or arange(start, end, [step], [opts]): [start, end).
function T.arange(...)
  local n = select("#", ...)
  local opts = n > 0 and select(n, ...) or nil
  if type(opts) == "table" then n = n - 1 else opts = {} end
  local a, b, step = ...
  if n == 1 then a, b = 0, a end
  if n > 3 or n < 1 then
    error("arange: expected (end), (start, end) or (start, end, step)", 2)
  end
  if n < 3 then step = nil end
  local device = check_device(opts, "arange")
  return apply_options(placed(C.arange(a, b, step, opts.dtype), device), opts)
end

function T.eye(n, opts)
  opts = check_options("eye", opts or {})
  if math.type(n) ~= "integer" or n < 0 then
    error(("eye: n must be an integer >= 0, got %s"):format(tostring(n)), 2)
  end
  local device = check_device(opts, "eye")
  return apply_options(placed(C.eye(n, opts.dtype), device), opts)
end

-- *_like(t, opts): t's shape, dtype and device unless opts say otherwise.
local function like(fname, make)
  return function(t, opts)
    check_tensor(fname, t)
    opts = check_options(fname, opts or {})
    local device = check_device(opts, fname) or C.device(t)
    return apply_options(make(C.size(t), opts.dtype or C.dtype(t), device),
      opts)
  end
end

T.zeros_like = like("zeros_like",
  function(s, d, device) return C.full(s, 0, d, device) end)
T.ones_like = like("ones_like",
  function(s, d, device) return C.full(s, 1, d, device) end)
T.empty_like = T.zeros_like
T.rand_like = like("rand_like", C.rand)
T.randn_like = like("randn_like", C.randn)
function T.full_like(t, value, opts)
  check_tensor("full_like", t)
  opts = check_options("full_like", opts or {})
  if type(value) ~= "number" and type(value) ~= "boolean" then
    error("full_like: value must be a number or boolean, got " .. type(value), 2)
  end
  if type(value) == "boolean" then value = value and 1 or 0 end
  local device = check_device(opts, "full_like") or C.device(t)
  return apply_options(C.full(C.size(t), value, opts.dtype or C.dtype(t),
    device), opts)
end

-- ---- CUDA devices --------------------------------------------------------
-- Device indices are 0-based, as in PyTorch and in "cuda:0".

T.cuda = {}

function T.cuda.is_available() return C.cuda_device_count() > 0 end
function T.cuda.device_count() return C.cuda_device_count() end
-- Why no CUDA device can be used here, or nil when one can.
function T.cuda.unavailable_reason() return C.cuda_unavailable_reason() end
-- Whether the devices are EMBER_CUDA_SIM's simulation (for testing).
function T.cuda.is_simulated() return C.cuda_is_simulated() end
function T.cuda.get_device_name(i) return C.cuda_device_name(i) end
-- Waits for the kernels queued on device i (default 0): for timing.
function T.cuda.synchronize(i) return C.cuda_synchronize(i) end
function T.cuda.memory_stats(i) return C.cuda_memory_stats(i) end
function T.cuda.memory_allocated(i)
  return C.cuda_memory_stats(i).allocated_bytes
end
function T.cuda.empty_cache() return C.cuda_empty_cache() end

T.manual_seed = C.manual_seed
T.initial_seed = C.initial_seed

-- ---- Grad mode ----------------------------------------------------------------

T.is_grad_enabled = C.is_grad_enabled
T.set_grad_enabled = C.set_grad_enabled

local function with_grad_mode(enabled, fn, ...)
  local previous = C.set_grad_enabled(enabled)
  local results = table.pack(pcall(fn, ...))
  C.set_grad_enabled(previous)
  if not results[1] then error(results[2], 0) end
  return table.unpack(results, 2, results.n)
end

-- no_grad(fn, ...): runs fn(...) without recording autograd; returns what
-- fn returns. The previous mode comes back even if fn raises.
function T.no_grad(fn, ...)
  return with_grad_mode(false, fn, ...)
end

function T.enable_grad(fn, ...)
  return with_grad_mode(true, fn, ...)
end

-- ---- BLAS threads ---------------------------------------------------------------

T.set_num_threads = C.set_num_threads
T.get_num_threads = C.get_num_threads

-- ---- Methods that are the C functions as they are ----------------------------------

local direct = {
  "size", "stride", "dim", "numel", "dtype", "device", "is_contiguous",
  "item", "totable", "transpose", "t", "narrow", "select", "unsqueeze",
  "squeeze", "contiguous", "clone", "detach", "add", "sub", "mul", "div",
  "pow", "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge", "neg",
  "exp", "log", "sqrt", "tanh", "sigmoid", "relu", "abs", "sign", "sin",
  "cos", "log1p", "reciprocal", "logical_not", "clamp", "sum", "prod",
  "mean", "max", "min", "argmax", "argmin", "matmul", "mm", "softmax",
  "log_softmax", "gather", "scatter", "index_select", "multinomial",
  "copy_", "fill_", "zero_", "add_", "sub_", "mul_", "div_", "clamp_",
  "sqrt_", "neg_", "relu_", "addcmul_", "addcdiv_", "uniform_", "normal_",
  "allclose", "equal", "backward", "requires_grad_",
}
for _, name in ipairs(direct) do
  methods[name] = C[name]
  T[name] = C[name]
end

-- device(t): where t lives; device(name): the device's own name ("cuda" ->
-- "cuda:0"), or an error saying why it cannot be used here.
function T.device(what)
  if is_tensor(what) then return C.device(what) end
  if what == nil then
    error("device: expected a tensor or a device name such as 'cuda:0', got nil", 2)
  end
  return check_device({ device = what }, "device")
end

T.cat = C.cat
T.stack = C.stack
T.where = C.where
T.concat = C.cat

methods.nelement = C.numel
methods.tolist = C.totable
methods.ndimension = C.dim
methods.greater = C.gt
methods.less = C.lt
methods.clamp_min = function(t, lo) return C.clamp(t, lo) end

-- backward(t, [gradient], [{retain_graph = true}])
function methods.backward(t, gradient, opts)
  if type(gradient) == "table" and not is_tensor(gradient) then
    gradient, opts = nil, gradient
  end
  if opts ~= nil then check_options("backward", opts) end
  C.backward(t, gradient, opts ~= nil and opts.retain_graph or false)
end
T.backward = methods.backward

-- Shape-taking methods accept varargs or a table. Each calls C.<name> as a
-- field and not as a tail call, so that the core's errors name it.
function methods.view(t, ...)
  local r = C.view(t, (shape_and_options("view", ...)))
  return r
end
function methods.reshape(t, ...)
  local r = C.reshape(t, (shape_and_options("reshape", ...)))
  return r
end
function methods.expand(t, ...)
  local r = C.expand(t, (shape_and_options("expand", ...)))
  return r
end
function methods.permute(t, ...)
  local r = C.permute(t, (shape_and_options("permute", ...)))
  return r
end
T.view, T.reshape, T.expand, T.permute =
  methods.view, methods.reshape, methods.expand, methods.permute

function methods.expand_as(t, other)
  return C.expand(t, C.size(other))
end

function methods.view_as(t, other)
  return C.view(t, C.size(other))
end

function methods.flatten(t, start_dim, end_dim)
  check_tensor("flatten", t)
  local shape = C.size(t)
  local n = #shape
  if n == 0 then return C.reshape(t, { 1 }) end
  start_dim = check_dim("flatten", t, start_dim or 1, "start_dim")
  end_dim = check_dim("flatten", t, end_dim or -1, "end_dim")
  if start_dim < 0 then start_dim = start_dim + n + 1 end
  if end_dim < 0 then end_dim = end_dim + n + 1 end
  if start_dim > end_dim then
    error(("flatten: start_dim %d comes after end_dim %d"):format(start_dim,
      end_dim), 2)
  end
  local out, merged = {}, 1
  for i = 1, n do
    if i < start_dim or i > end_dim then
      out[#out + 1] = shape[i]
    else
      merged = merged * shape[i]
      if i == end_dim then out[#out + 1] = merged end
    end
  end
  return C.reshape(t, out)
end
T.flatten = methods.flatten

-- to(dtype) / to("cpu") / to("cuda:1") / to({dtype =, device =, copy =})
function methods.to(t, what, copy)
  local dtype, device = nil, nil
  if type(what) == "table" then
    dtype, device, copy = what.dtype, what.device, what.copy
  elseif what == "cpu" or (type(what) == "string" and what:match("^cuda")) then
    device = what
  else
    dtype = what
  end
  if device ~= nil then device = check_device({ device = device }, "to") end
  return C.to(t, dtype, copy, device)
end
T.to = methods.to

-- cuda([index]) / cpu(): copies onto that device (t itself if it is there).
function methods.cuda(t, index)
  if index ~= nil and math.type(index) ~= "integer" then
    error(("cuda: the device index must be an integer, got %s")
      :format(tostring(index)), 2)
  end
  return methods.to(t, "cuda:" .. (index or 0))
end
function methods.cpu(t) return C.to(t, nil, false, "cpu") end
function methods.is_cuda(t) return C.device(t) ~= "cpu" end

for name, dtype in pairs({ float = "float32", double = "float64",
  long = "int64", int = "int32", byte = "uint8", bool = "bool" }) do
  methods[name] = function(t) return C.to(t, dtype) end
end

function methods.type(t, dtype)
  if dtype == nil then return C.dtype(t) end
  return C.to(t, dtype)
end


-- add(other, alpha) as PyTorch's add with alpha.
function methods.add(a, b, alpha)
  if alpha ~= nil then b = b * alpha end
  return C.add(a, b)
end
T.add = methods.add

function methods.sub(a, b, alpha)
  if alpha ~= nil then b = b * alpha end
  return C.sub(a, b)
end
T.sub = methods.sub

function methods.square(t) return C.mul(t, t) end
T.square = methods.square

function methods.masked_fill(t, mask, value)
  return C.where(mask, value, t)
end
T.masked_fill = methods.masked_fill

-- addmm(bias, a, b, [{beta =, alpha =}]): beta * bias + alpha * a @ b.
function methods.addmm(bias, a, b, opts)
  opts = check_options("addmm", opts or {})
  return C.addmm(bias, a, b, opts.beta, opts.alpha)
end
T.addmm = methods.addmm

function methods.dot(a, b)
  return C.sum(C.mul(a, b))
end
T.dot = methods.dot
methods.mv = C.matmul
T.mv = C.matmul

-- var/std(t, [dim], [{unbiased = true, keepdim = false}]) as PyTorch's.
function methods.var(t, dim, opts)
  if type(dim) == "table" then dim, opts = nil, dim end
  check_tensor("var", t)
  if dim ~= nil then check_dim("var", t, dim) end
  opts = check_options("var", opts or {})
  local unbiased = opts.unbiased ~= false
  local n = dim == nil and C.numel(t) or C.size(t, dim)
  local centred = t - C.mean(t, dim, true)
  local sum = C.sum(centred * centred, dim, opts.keepdim)
  return sum / math.max(unbiased and n - 1 or n, 0)
end

function methods.std(t, dim, opts)
  return C.sqrt(methods.var(t, dim, opts))
end
T.var, T.std = methods.var, methods.std

-- norm(t, [p = 2]): the p-norm of all elements.
function methods.norm(t, p)
  p = p or 2
  if type(p) ~= "number" or p ~= p then
    error(("norm: p must be a number, got %s"):format(tostring(p)), 2)
  end
  if p == 2 then return C.sqrt(C.sum(t * t)) end
  return C.pow(C.sum(C.pow(C.abs(t), p)), 1 / p)
end
T.norm = methods.norm

-- chunk(n, dim) / split(size, dim) / unbind(dim): lists of views.
function methods.split(t, size, dim)
  if math.type(size) ~= "integer" or size < 1 then
    error(("split: size must be an integer >= 1, got %s"):format(
      tostring(size)), 2)
  end
  check_tensor("split", t)
  dim = check_dim("split", t, dim or 1)
  local total, parts, start = C.size(t, dim), {}, 1
  while start <= total do
    local length = math.min(size, total - start + 1)
    parts[#parts + 1] = C.narrow(t, dim, start, length)
    start = start + length
  end
  return parts
end

function methods.chunk(t, n, dim)
  if math.type(n) ~= "integer" or n < 1 then
    error(("chunk: the number of chunks must be an integer >= 1, got %s")
      :format(tostring(n)), 2)
  end
  check_tensor("chunk", t)
  local total = C.size(t, check_dim("chunk", t, dim or 1))
  return methods.split(t, math.max(1, (total + n - 1) // n), dim)
end

function methods.unbind(t, dim)
  check_tensor("unbind", t)
  dim = check_dim("unbind", t, dim or 1)
  local parts = {}
  for i = 1, C.size(t, dim) do parts[i] = C.select(t, dim, i) end
  return parts
end
T.split, T.chunk, T.unbind = methods.split, methods.chunk, methods.unbind

function methods.scatter_add(t, dim, index, src)
  return C.scatter(t, dim, index, src, true)
end
T.scatter_add = methods.scatter_add

function methods.index_fill(t, dim, index, value)
  local out = C.clone(t)
  for i = 1, C.numel(index) do
    C.fill_(C.select(out, dim, C.item(C.select(index, 1, i))), value)
  end
  return out
end
T.index_fill = methods.index_fill
T.clamp_min = methods.clamp_min

-- dropout(x, p, training): zeroes elements with probability p and scales
-- the rest by 1 / (1 - p), as PyTorch's inverted dropout.
function T.dropout(x, p, training)
  check_tensor("dropout", x)
  p = p or 0.5
  if type(p) ~= "number" or not (p >= 0 and p <= 1) then -- NaN fails too
    error(("dropout: probability must be in [0, 1], got %s"):format(
      tostring(p)), 2)
  end
  if training == false or p == 0 then return x end
  if p == 1 then return x * 0 end
  local keep = C.to(C.ge(C.rand(C.size(x), C.dtype(x), C.device(x)), p),
    C.dtype(x))
  return x * (keep * (1 / (1 - p)))
end
methods.dropout = T.dropout

function T.relu(x) return C.relu(x) end
T.sigmoid, T.tanh = C.sigmoid, C.tanh

-- ---- Printing ----------------------------------------------------------------

local function tensor_tostring(t)
  if C.is_closed(t) then return "tensor(closed)" end
  local device = C.device(t)
  return format.tensor(C.size(t), C.values(t), {
    dtype = C.dtype(t),
    device = device,
    requires_grad = t.requires_grad and t.is_leaf,
    grad_fn = t.grad_fn,
  })
end

local mt = C.metatable
mt.__tostring = tensor_tostring
mt.__name = "ember.Tensor"

C.set_methods(methods)
T.methods = methods

return T
