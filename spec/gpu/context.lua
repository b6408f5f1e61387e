-- What the GPU checks share: the device under test and the comparison of
-- its results with the CPU's. spec/gpu/run.lua makes one context and passes
-- it to every check function as its only argument (`g` in the checks):
--
--   g.device              "cuda" (the device under test, as a name for to())
--   g.device_name         "cuda:0" (what t:device() says for it)
--   g.device_count        how many CUDA devices there are
--   g.simulated           whether they are EMBER_CUDA_SIM's
--   g:same(fn, inputs)    runs fn on the CPU inputs and on device copies of
--                         them; every result must be on the device and equal
--                         the CPU's (tolerances per dtype, exact for integer
--                         and bool results)
--   g:close(got, want)    one tensor (any device) against a CPU one
--   g:is(cond, fmt, ...)  a plain assertion
--   g:raises(fn, ...)     fn must raise; each further string must appear in
--                         the message; returns the message
--   g:skip(reason)        ends the check as skipped
--   g:need_devices(n)     skips unless there are n CUDA devices
--   g:need_cuda()         skips under run.lua --cpu (the CPU against itself)
--   g:path(rel)           a path relative to the repository root
local T = require("ember").tensor

local context = {}
context.__index = context

local SKIP = {}

-- Relative and absolute tolerances. "tight" serves elementwise kernels, where
-- the device and the CPU differ by an ulp or two of the libm; "loose" serves
-- anything that accumulates (reductions, matrix products, softmax, whole
-- models), where the order of the additions differs.
local TOLERANCE = {
  tight = { float32 = { 1e-5, 1e-6 }, float64 = { 1e-12, 1e-14 } },
  loose = { float32 = { 1e-4, 1e-4 }, float64 = { 1e-10, 1e-12 } },
}

function context.new(fields)
  local g = setmetatable({}, context)
  for k, v in pairs(fields) do g[k] = v end
  return g
end

function context.is_skip(err)
  return getmetatable(err) == SKIP
end

function context.skip_reason(err)
  return err.reason
end

function context:skip(reason)
  error(setmetatable({ reason = reason }, SKIP), 0)
end

function context:need_devices(n)
  self:need_cuda()
  if self.device_count < n then
    self:skip(("needs %d CUDA devices, this machine has %d (EMBER_CUDA_SIM=%d "
      .. "simulates %d)"):format(n, self.device_count, n, n))
  end
end

-- Skips under run.lua --cpu, where the CPU stands in for the device: for
-- checks of the cuda API itself.
function context:need_cuda()
  if self.cpu_only then self:skip("--cpu: needs a CUDA device") end
end

function context:path(rel)
  return self.root .. "/" .. rel
end

local function fail(fmt, ...)
  error(select("#", ...) > 0 and fmt:format(...) or fmt, 0)
end
context.fail = function(_, fmt, ...) fail(fmt, ...) end

function context:is(cond, fmt, ...)
  if not cond then fail(fmt or "assertion failed", ...) end
  return cond
end

local function show(v, depth)
  if type(v) == "string" then return ("%q"):format(v) end
  if type(v) == "table" and getmetatable(v) == nil and (depth or 0) < 3 then
    local parts = {}
    for i = 1, #v do parts[i] = show(v[i], (depth or 0) + 1) end
    for k, x in pairs(v) do
      if math.type(k) ~= "integer" or k < 1 or k > #v then
        parts[#parts + 1] = tostring(k) .. "=" .. show(x, (depth or 0) + 1)
      end
    end
    return "{" .. table.concat(parts, ", ") .. "}"
  end
  if math.type(v) == "float" then return ("%.9g"):format(v) end
  return tostring(v)
end

-- Deep equality of plain values and tables.
local function deep_equal(a, b)
  if type(a) ~= "table" or type(b) ~= "table" then return a == b end
  for k, v in pairs(a) do
    if not deep_equal(v, b[k]) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end

function context:eq(got, want, what)
  if not deep_equal(got, want) then
    fail("%s: expected %s, got %s", what or "value", show(want), show(got))
  end
end

function context:raises(fn, ...)
  local ok, err = pcall(fn)
  if ok then fail("expected an error, but the call succeeded") end
  local msg = tostring(type(err) == "table" and (err.message or err.msg) or err)
  if type(err) == "table" and getmetatable(err) and
      getmetatable(err).__tostring then
    msg = tostring(err)
  end
  for i = 1, select("#", ...) do
    local part = select(i, ...)
    if not msg:find(part, 1, true) then
      fail("error message does not mention %s: %s", show(part), msg)
    end
  end
  return msg
end

-- ---- Tensor comparison ------------------------------------------------

local function shape_str(shape)
  return "[" .. table.concat(shape, ", ") .. "]"
end

-- The elements of a tensor in row-major order, as a Lua list, read on the
-- CPU.
local function elements(t)
  if t:device() ~= "cpu" then t = t:cpu() end
  t = t:detach()
  if t:dim() == 0 then return { t:item() } end
  return t:reshape({ t:numel() }):totable()
end

-- The 1-based multi-index of flat position i (1-based) in `shape`.
local function unravel(i, shape)
  local index, rest = {}, i - 1
  for d = #shape, 1, -1 do
    index[d] = rest % shape[d] + 1
    rest = rest // shape[d]
  end
  return "[" .. table.concat(index, ", ") .. "]"
end

-- Whether got (any device) and want agree everywhere, by tensor ops on the
-- CPU: the fast path for large tensors, whose elements the Lua loop below
-- then reads only to describe a difference.
local function all_close(got, want, exact, rtol, atol)
  local g = got:detach():cpu()
  if exact then return g:equal(want) end
  local w = want:detach():to("float64")
  g = g:to("float64")
  local within = (g - w):abs():le(w:abs() * rtol + atol):to("int64")
  local same = g:eq(w):to("int64")           -- infinities
  local nans = g:ne(g):to("int64") * w:ne(w):to("int64")
  return (within + same + nans):gt(0):sum():item() == want:numel()
end

-- close(got, want, {what=, device=, loose=, rtol=, atol=}): `got` (on any
-- device) has want's shape and dtype and its values, within the tolerance
-- of the dtype (exact for integers and bools; NaN equals NaN). `device`,
-- when given, is the device `got` must be on.
function context:close(got, want, opts)
  opts = opts or {}
  local what = opts.what or "result"
  if not T.is_tensor(got) then
    fail("%s: expected a tensor, got %s", what, show(got))
  end
  if opts.device and got:device() ~= opts.device then
    fail("%s: on %s, expected %s", what, got:device(), opts.device)
  end
  if got:dtype() ~= want:dtype() then
    fail("%s: dtype %s, expected %s", what, got:dtype(), want:dtype())
  end
  local gs, ws = got:size(), want:size()
  if shape_str(gs) ~= shape_str(ws) then
    fail("%s: shape %s, expected %s", what, shape_str(gs), shape_str(ws))
  end
  local dtype = want:dtype()
  local tol = TOLERANCE[opts.loose and "loose" or "tight"][dtype]
  local rtol = opts.rtol or (tol and tol[1]) or 0
  local atol = opts.atol or (tol and tol[2]) or 0
  local exact = tol == nil and opts.rtol == nil and opts.atol == nil
  if want:numel() > 4096 and all_close(got, want, exact, rtol, atol) then
    return
  end
  local a, b = elements(got), elements(want)
  local bad, first, worst = 0, nil, 0
  for i = 1, #b do
    local x, w = a[i], b[i]
    local ok
    if exact or type(w) ~= "number" then
      ok = x == w
    elseif w ~= w then
      ok = x ~= x
    elseif w == math.huge or w == -math.huge then
      ok = x == w
    else
      local diff = math.abs(x - w)
      ok = diff <= atol + rtol * math.abs(w)
      if diff > worst or diff ~= diff then worst = diff end
    end
    if not ok then
      bad = bad + 1
      first = first or i
    end
  end
  if bad > 0 then
    fail("%s (%s %s): %d of %d elements differ%s; first at %s: got %s, "
      .. "expected %s%s", what, dtype, shape_str(ws), bad, #b,
      exact and " (exact)" or (" beyond rtol %g atol %g"):format(rtol, atol),
      unravel(first, ws), show(a[first]), show(b[first]),
      exact and "" or (", largest difference %.3g"):format(worst))
  end
end

-- Moves every tensor of a list of values (nested tables too) to `device`.
local function moved(values, device)
  local out = { n = values.n or #values }
  for i = 1, out.n do
    local v = values[i]
    if T.is_tensor(v) then
      out[i] = v:to(device)
    elseif type(v) == "table" and getmetatable(v) == nil then
      out[i] = moved(v, device)
    else
      out[i] = v
    end
  end
  return out
end

-- Compares a result of the device run with the CPU run's, recursively.
function context:_compare(got, want, opts, what)
  if T.is_tensor(want) then
    local o = setmetatable({ what = what, device = self.device_name },
      { __index = opts })
    self:close(got, want, o)
  elseif type(want) == "table" then
    if type(got) ~= "table" then
      fail("%s: expected a table, got %s", what, show(got))
    end
    for k, v in pairs(want) do
      self:_compare(got[k], v, opts, ("%s[%s]"):format(what, tostring(k)))
    end
  elseif math.type(want) == "float" and not opts.exact then
    local tol = TOLERANCE[opts.loose and "loose" or "tight"].float64
    if type(got) ~= "number" or
        math.abs(got - want) > tol[2] + tol[1] * math.abs(want) then
      fail("%s: got %s, expected %s", what, show(got), show(want))
    end
  elseif got ~= want then
    fail("%s: got %s, expected %s", what, show(got), show(want))
  end
end

-- same(fn, inputs, {what=, loose=, rtol=, atol=}): fn(inputs...) on the
-- CPU, and fn on device copies of the inputs; each result (tensors, also
-- in tables, and plain values) must agree, device results on the device.
-- Returns the CPU results.
function context:same(fn, inputs, opts)
  opts = opts or {}
  local what = opts.what or "result"
  local cpu_in = { n = #inputs }
  for i = 1, #inputs do cpu_in[i] = inputs[i] end
  local dev_in = moved(cpu_in, self.device)
  local want = table.pack(fn(table.unpack(cpu_in, 1, cpu_in.n)))
  local ok, got = pcall(function()
    return table.pack(fn(table.unpack(dev_in, 1, dev_in.n)))
  end)
  if not ok then
    fail("%s: on %s: %s", what, self.device_name, tostring(got))
  end
  if got.n ~= want.n then
    fail("%s: %d results on %s, %d on the CPU", what, got.n, self.device_name,
      want.n)
  end
  for i = 1, want.n do
    self:_compare(got[i], want[i], opts,
      want.n == 1 and what or ("%s (result %d)"):format(what, i))
  end
  return table.unpack(want, 1, want.n)
end

-- A CPU tensor of `shape` (a table) with distinct values, so that max, min
-- and sort-like kernels have no ties to break differently.
function context.distinct(shape, dtype)
  dtype = dtype or "float32"
  local n = 1
  for _, s in ipairs(shape) do n = n * s end
  -- A shuffle drawn from the seeded generator (multinomial without
  -- replacement), so that the positions of the extremes vary.
  local order = T.ones(1, n):multinomial(n, false):reshape({ n }):totable()
  local float = dtype:match("^float") ~= nil
  local out = {}
  for i = 1, n do
    out[i] = float and (order[i] - (n + 1) / 2) / n or order[i] - n // 2
  end
  return T.tensor(out, { dtype = dtype }):reshape(shape)
end

return context
