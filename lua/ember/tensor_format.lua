-- Formats tensors the way PyTorch 1.13's repr(tensor) does (torch/_tensor_str.py).
-- It works on plain data (shape, flat row-major values, options) so it does not
-- depend on the tensor type and can be tested on its own.
local M = {}

local huge, max, min = math.huge, math.max, math.min
local rep, fmt = string.rep, string.format

-- PyTorch's default print options; any of them may be overridden in opts.
local DEFAULTS = { precision = 4, threshold = 1000, edgeitems = 3, linewidth = 80 }

local FLOAT = { float16 = true, bfloat16 = true, float32 = true, float64 = true }

-- dtypes PyTorch never names in the suffix of a non-empty tensor.
local IMPLICIT = { float32 = true, int64 = true, bool = true }

-- What torch.tensor(values) would pick when no dtype is given.
local function infer_dtype(values)
  local dtype = "int64"
  for i = 1, #values do
    local v = values[i]
    if type(v) == "boolean" then return "bool" end
    if math.type(v) == "float" then dtype = "float32" end
  end
  return #values == 0 and "float32" or dtype
end

local function resolve(opts, values)
  opts = opts or {}
  local o = {}
  for k, v in pairs(DEFAULTS) do o[k] = opts[k] or v end
  o.sci_mode = opts.sci_mode
  o.dtype = opts.dtype or infer_dtype(values)
  o.prefix = opts.prefix or "tensor("
  o.indent = opts.indent or #o.prefix
  o.device = opts.device or "cpu"
  o.requires_grad, o.grad_fn = opts.requires_grad, opts.grad_fn
  return o
end

local function numel(shape)
  local n = 1
  for i = 1, #shape do n = n * shape[i] end
  return n
end

local function pad(s, width)
  return rep(" ", width - #s) .. s
end

local function finite(v)
  return v == v and v ~= huge and v ~= -huge
end

-- Python spells non-finite floats this way whatever the format (C may say -nan).
local function special(v)
  if v ~= v then return "nan" end
  if v == huge then return "inf" end
  if v == -huge then return "-inf" end
end

-- Mirrors _Formatter: picks int/fixed/scientific mode and a common width from
-- the values that will be shown. Returns the width and an element formatter.
local function formatter(vals, o)
  local width = 1
  if o.dtype == "bool" then
    for _, v in ipairs(vals) do width = max(width, v and 4 or 5) end
    return width, function(v) return pad(v and "True" or "False", width) end
  end
  if not FLOAT[o.dtype] then
    local function str(v) return tostring(math.tointeger(v) or v) end
    for _, v in ipairs(vals) do width = max(width, #str(v)) end
    return width, function(v) return pad(str(v), width) end
  end

  -- Width and mode come only from the non-zero finite values, as in PyTorch;
  -- zeros, inf and nan are padded (or overflow) without affecting them.
  local int_mode, sci = true, false
  local efmt, ffmt = "%." .. o.precision .. "e", "%." .. o.precision .. "f"
  local lo, hi, nonzero = huge, 0, {}
  for _, v in ipairs(vals) do
    if v ~= 0 and finite(v) then
      nonzero[#nonzero + 1] = v
      local a = math.abs(v)
      lo, hi = min(lo, a), max(hi, a)
      if v % 1 ~= 0 then int_mode = false end
    end
  end
  if #nonzero > 0 then
    sci = hi / lo > 1000 or hi > 1e8 or (not int_mode and lo < 1e-4)
    for _, v in ipairs(nonzero) do
      local s
      if sci then s = fmt(efmt, v)
      elseif int_mode then s = fmt("%.0f", v) .. "." -- the dot marks a float
      else s = fmt(ffmt, v) end
      width = max(width, #s)
    end
  end
  -- An explicit sci_mode changes the notation but not the width, as PyTorch.
  if o.sci_mode ~= nil then sci = o.sci_mode end

  return width, function(v)
    local s = special(v)
    if s then return pad(s, width) end
    if sci then s = fmt(efmt, v)
    elseif int_mode then s = fmt("%.0f", v) .. "."
    else s = fmt(ffmt, v) end
    return pad(s, width)
  end
end

-- Indices shown along a dimension of size n; false marks the ellipsis.
local function shown(n, ctx)
  local idx = {}
  if ctx.summarize and n > 2 * ctx.edgeitems then
    for i = 0, ctx.edgeitems - 1 do idx[#idx + 1] = i end
    idx[#idx + 1] = false
    for i = n - ctx.edgeitems, n - 1 do idx[#idx + 1] = i end
  else
    for i = 0, n - 1 do idx[#idx + 1] = i end
  end
  return idx
end

-- Gathers the values that will be printed (get_summarized_data) so the
-- formatter's mode and width ignore the elided ones.
local function collect(ctx, d, off, out)
  if d > #ctx.shape then
    out[#out + 1] = ctx.at(off)
    return out
  end
  for _, i in ipairs(shown(ctx.shape[d], ctx)) do
    if i then collect(ctx, d + 1, off + i * ctx.strides[d], out) end
  end
  return out
end

-- _tensor_str_with_formatter / _vector_str: indent is the column of the '['.
local function render(ctx, d, off, indent)
  local ndim, stride = #ctx.shape, ctx.strides[d]
  local parts = {}
  for _, i in ipairs(shown(ctx.shape[d], ctx)) do
    if d == ndim then
      parts[#parts + 1] = i and ctx.fmt(ctx.at(off + i * stride)) or " ..."
    else
      parts[#parts + 1] = i and render(ctx, d + 1, off + i * stride, indent + 1) or "..."
    end
  end
  local gap = rep(" ", indent + 1)
  if d < ndim then
    -- One newline per remaining dimension: blank lines between 2-D blocks.
    return "[" .. table.concat(parts, "," .. rep("\n", ndim - d) .. gap) .. "]"
  end
  -- The ellipsis counts as an element when wrapping, as in PyTorch.
  local per_line = max(1, (ctx.linewidth - indent) // (ctx.width + 2))
  local lines = {}
  for s = 1, #parts, per_line do
    lines[#lines + 1] = table.concat(parts, ", ", s, min(s + per_line - 1, #parts))
  end
  return "[" .. table.concat(lines, ",\n" .. gap) .. "]"
end

-- The body of a resolved tensor: "[]" when empty, a scalar when 0-dim.
local function body(shape, values, o)
  local n = numel(shape)
  assert(#values == n, fmt("tensor_format: %d values for %d elements", #values, n))
  if n == 0 then return "[]" end
  local ctx = {
    shape = shape, strides = {}, summarize = n > o.threshold,
    edgeitems = o.edgeitems, linewidth = o.linewidth,
  }
  local stride = 1
  for d = #shape, 1, -1 do
    ctx.strides[d], stride = stride, stride * shape[d]
  end
  -- float32 values are rounded to single precision first, so that printing
  -- agrees with what the tensor actually stores.
  if o.dtype == "float32" then
    ctx.at = function(off)
      local v = values[off + 1]
      return finite(v) and (string.unpack("f", string.pack("f", v))) or v
    end
  else
    ctx.at = function(off) return values[off + 1] end
  end
  ctx.width, ctx.fmt = formatter(collect(ctx, 1, 0, {}), o)
  if #shape == 0 then return ctx.fmt(ctx.at(0)) end
  return render(ctx, 1, 0, o.indent)
end

-- Python's str(tuple): (0, 3), (0,), ().
local function tuple_str(shape)
  local parts = {}
  for i = 1, #shape do parts[i] = tostring(shape[i]) end
  return "(" .. table.concat(parts, ", ") .. (#shape == 1 and ",)" or ")")
end

-- _add_suffixes: a suffix that would pass the line width goes on a new line.
local function add_suffixes(str, suffixes, indent, linewidth)
  local out = { str }
  local last_nl = str:match(".*()\n") or 0
  local last_len = #str - last_nl + 2 -- PyTorch's arithmetic, off-by-two and all
  for _, suffix in ipairs(suffixes) do
    if last_len + #suffix + 2 > linewidth then
      out[#out + 1] = ",\n" .. rep(" ", indent) .. suffix
      last_len = indent + #suffix
    else
      out[#out + 1] = ", " .. suffix
      last_len = last_len + #suffix + 2
    end
  end
  out[#out + 1] = ")"
  return table.concat(out)
end

-- format.values(shape, values, opts): just the bracketed body, indented as if
-- it followed opts.prefix (or opts.indent columns).
function M.values(shape, values, opts)
  return body(shape, values, resolve(opts, values))
end

-- format.tensor(shape, values, opts): the full repr with prefix and suffixes.
function M.tensor(shape, values, opts)
  local o = resolve(opts, values)
  local suffixes = {}
  if o.device ~= "cpu" then suffixes[#suffixes + 1] = "device='" .. o.device .. "'" end
  if numel(shape) == 0 then
    -- Nothing to infer the dtype from, so anything but the default is named.
    if #shape ~= 1 then suffixes[#suffixes + 1] = "size=" .. tuple_str(shape) end
    if o.dtype ~= "float32" then suffixes[#suffixes + 1] = "dtype=" .. o.dtype end
  elseif not IMPLICIT[o.dtype] then
    suffixes[#suffixes + 1] = "dtype=" .. o.dtype
  end
  if o.grad_fn then
    suffixes[#suffixes + 1] = "grad_fn=<" .. o.grad_fn .. ">"
  elseif o.requires_grad then
    suffixes[#suffixes + 1] = "requires_grad=True"
  end
  return add_suffixes(o.prefix .. body(shape, values, o), suffixes, o.indent, o.linewidth)
end

return M
