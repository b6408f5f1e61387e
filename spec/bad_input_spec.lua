-- Bad input at the edges of the public Lua API: wrong types, wrong counts,
-- nil, huge sizes, NaN, unknown names, out-of-range dims and indices, closed
-- tensors. Each row is {name, function() call end, pattern}: the call must
-- raise a Lua error whose message matches the pattern (which names the
-- function and what was wrong), not a crash and not a generic error from
-- inside the library; after every row the process still computes.
local ember = require "ember"
local T = ember.tensor
local nn, optim = ember.nn, ember.optim
local distributions, envs = ember.distributions, ember.envs
local futures, rpc = ember.futures, ember.rpc
local dist_autograd, dist_optim = ember.dist_autograd, ember.dist_optim
local world = require "spec.support.world"

local NAN = 0 / 0
local HUGE = 1 << 40            -- an integer size no machine can hold

-- Messages of Lua's own that mean the library tripped over the input
-- instead of checking it.
local GENERIC = {
  "attempt to index", "attempt to call", "attempt to perform",
  "attempt to compare", "attempt to concatenate", "attempt to div",
  "attempt to mul", "attempt to add", "attempt to sub",
  "bad argument #%d+ to '%?'",
}

local function alive()
  assert.equal(6.0, T.ones(2, 3):sum():item())
end

-- Adds one `it` per row of `rows` (checked after each with `check`).
local function rows_of(rows, check)
  check = check or alive
  for _, row in ipairs(rows) do
    local name, call, pattern = row[1], row[2], row[3]
    it(name, function()
      local ok, err = pcall(call)
      assert(not ok, name .. ": expected an error, got none")
      local message = tostring(err)
      assert(message:match(pattern), ("%s: the message %q does not match %q")
        :format(name, message, pattern))
      for _, generic in ipairs(GENERIC) do
        assert(not message:match(generic), ("%s: generic error %q"):format(
          name, message))
      end
      check()
    end)
  end
  return #rows
end

-- Row counts per module, printed at the end (the report quotes them).
local counts = {}

-- --- ember.tensor ---------------------------------------------------------------

local function closed_tensor()
  local c = T.ones(2)
  getmetatable(c).__close(c)
  return c
end

local t = T.ones(2, 3)
local tensor_rows = {
  -- creation: sizes
  { "zeros(-1)", function() return T.zeros(-1) end, "zeros: size 1 must be an integer >= 0, got %-1" },
  { "zeros(2^40 float)", function() return T.zeros(2 ^ 40) end, "zeros: size 1 must be an integer" },
  { "zeros(1<<40) out of memory", function() return T.zeros(HUGE) end, "out of memory allocating 1099511627776 elements" },
  { "zeros(2^31 x 2^31 elements)", function() return T.zeros(1 << 31, 1 << 31) end, "shape %[2147483648, 2147483648%] is too large" },
  { "zeros(maxinteger)", function() return T.zeros(math.maxinteger) end, "is too large" },
  { "zeros(mininteger)", function() return T.zeros(math.mininteger) end, "zeros: size 1 must be an integer >= 0" },
  { "zeros(math.huge)", function() return T.zeros(math.huge) end, "zeros: size 1 must be an integer, got inf" },
  { "zeros(2^63)", function() return T.zeros(2 ^ 63) end, "zeros: size 1 must be an integer" },
  { "zeros(NaN)", function() return T.zeros(NAN) end, "zeros: size 1 must be an integer, got %-?nan" },
  { "zeros({NaN})", function() return T.zeros({ NAN }) end, "zeros: size 1 must be an integer >= 0, got %-?nan" },
  { "zeros({1.5})", function() return T.zeros({ 1.5 }) end, "zeros: size 1 must be an integer >= 0, got 1.5" },
  { "zeros('x')", function() return T.zeros("x") end, "zeros: size 1 must be an integer, got x" },
  { "ones(2, -3)", function() return T.ones(2, -3) end, "ones: size 2 must be an integer >= 0, got %-3" },
  { "rand(-1)", function() return T.rand(-1) end, "rand: size 1 must be an integer >= 0" },
  { "randn(NaN)", function() return T.randn(NAN) end, "randn: size 1 must be an integer" },
  { "rand(1<<40)", function() return T.rand(HUGE) end, "out of memory" },
  { "empty({2, nil, 3}) hole", function() return T.empty({ 2, nil, 3 }) end, "empty: size 2 must be an integer >= 0, got nil" },
  { "zeros 9 dims", function() return T.zeros({ 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1 }) end, "a shape has 0 to %d+ sizes" },
  -- creation: options
  { "zeros dtype float16", function() return T.zeros(2, { dtype = "float16" }) end, "unknown dtype 'float16'" },
  { "zeros dtype number", function() return T.zeros(2, { dtype = 5 }) end, "unknown dtype '5'" },
  { "zeros device tpu", function() return T.zeros(2, { device = "tpu" }) end, "zeros: unknown device 'tpu'" },
  { "zeros device boolean", function() return T.zeros(2, { device = true }) end, "zeros: device must be a string" },
  { "zeros device cuda:99", function() return T.zeros(2, { device = "cuda:99" }) end, "zeros: device 'cuda:99' is not available" },
  { "zeros device cuda:-1", function() return T.zeros(2, { device = "cuda:-1" }) end, "zeros: .*device" },
  { "zeros int64 requires_grad", function() return T.zeros(2, { dtype = "int64", requires_grad = true }) end, "only float tensors can require grad, not int64" },
  { "full(nil, 1)", function() return T.full(nil, 1) end, "full: shape must be a table, got nil" },
  { "full({2}, 'x')", function() return T.full({ 2 }, "x") end, "full: value must be a number or boolean, got string" },
  { "full({-2}, 1)", function() return T.full({ -2 }, 1) end, "full: size 1 must be an integer >= 0" },
  { "full options 5", function() return T.full({ 2 }, 1, 5) end, "full: options must be a table, got number" },
  { "tensor(nil)", function() return T.tensor(nil) end, "tensor: expected a table, number, boolean or tensor, got nil" },
  { "tensor(function)", function() return T.tensor(print) end, "tensor: expected a table, number, boolean or tensor, got function" },
  { "tensor({1, 'a'})", function() return T.tensor({ 1, "a" }) end, "tensor: expected numbers, booleans or nested tables, found a string" },
  { "tensor ragged", function() return T.tensor({ { 1, 2 }, { 3 } }) end, "tensor: ragged nested table" },
  { "tensor cycle", function() local c = {}; c[1] = c; return T.tensor(c) end, "tensor: nested too deeply" },
  { "tensor 100 deep", function() local d = 1; for _ = 1, 100 do d = { d } end; return T.tensor(d) end, "tensor: nested too deeply" },
  { "tensor of a 2-element tensor", function() return T.tensor({ T.ones(2) }) end, "tensor: a tensor of 2 elements inside the data" },
  { "tensor options 'x'", function() return T.tensor({ 1 }, "x") end, "tensor: options must be a table, got string" },
  { "tensor dtype bogus", function() return T.tensor({ 1 }, { dtype = "bogus" }) end, "unknown dtype 'bogus'" },
  { "arange()", function() return T.arange() end, "arange: expected %(end%), %(start, end%) or %(start, end, step%)" },
  { "arange('a')", function() return T.arange("a") end, "bad argument #2 to 'arange' %(number expected, got string%)" },
  { "arange step 0", function() return T.arange(0, 10, 0) end, "arange: step must be non%-zero" },
  { "arange NaN end", function() return T.arange(0, NAN) end, "arange: step must be non%-zero and the bounds numbers" },
  { "arange math.huge", function() return T.arange(0, math.huge) end, "arange: inf elements are too many" },
  { "arange 1e20", function() return T.arange(0, 1e20) end, "arange: 1e%+20 elements are too many" },
  { "eye(-1)", function() return T.eye(-1) end, "eye: n must be an integer >= 0, got %-1" },
  { "eye(NaN)", function() return T.eye(NAN) end, "eye: n must be an integer >= 0" },
  { "eye(1<<32)", function() return T.eye(1 << 32) end, "shape %[4294967296, 4294967296%] is too large" },
  { "zeros_like(nil)", function() return T.zeros_like(nil) end, "zeros_like: input must be a tensor, got nil" },
  { "rand_like(5)", function() return T.rand_like(5) end, "rand_like: input must be a tensor, got number" },
  { "full_like(t, 'x')", function() return T.full_like(t, "x") end, "full_like: value must be a number or boolean, got string" },
  { "manual_seed(NaN)", function() return T.manual_seed(NAN) end, "bad argument #1 to 'manual_seed' %(number has no integer representation%)" },
  { "manual_seed('x')", function() return T.manual_seed("x") end, "bad argument #1 to 'manual_seed'" },
  { "set_num_threads(0)", function() return T.set_num_threads(0) end, "set_num_threads.*the number of threads must be from 1 to 1024, not 0" },
  { "set_num_threads(1<<40)", function() return T.set_num_threads(HUGE) end, "set_num_threads.*not 1099511627776" },
  { "device(nil)", function() return T.device(nil) end, "device: expected a tensor or a device name" },
  { "device('tpu')", function() return T.device("tpu") end, "device: unknown device 'tpu'" },
  { "cuda.get_device_name(-1)", function() return T.cuda.get_device_name(-1) end, "a device index is an integer from 0" },
  { "cuda.memory_stats('x')", function() return T.cuda.memory_stats("x") end, "bad argument #1 to 'cuda_memory_stats'" },
  -- dims and indices
  { "sum(0)", function() return t:sum(0) end, "bad argument #1 to 'sum' %(dimension 0 does not exist: dimensions count from 1%)" },
  { "sum(3)", function() return t:sum(3) end, "'sum' %(dimension 3 out of range for a tensor of 2 dimensions%)" },
  { "sum(1<<40)", function() return t:sum(HUGE) end, "'sum' %(dimension 1099511627776 out of range" },
  { "sum(NaN)", function() return t:sum(NAN) end, "'sum' %(number has no integer representation%)" },
  { "sum('x')", function() return t:sum("x") end, "'sum' %(number expected, got string%)" },
  { "mean(-3)", function() return t:mean(-3) end, "'mean' %(dimension %-3 out of range" },
  { "max(9)", function() return t:max(9) end, "'max' %(dimension 9 out of range" },
  { "argmax(0)", function() return t:argmax(0) end, "'argmax' %(dimension 0 does not exist" },
  { "softmax()", function() return t:softmax() end, "'softmax' %(number expected, got no value%)" },
  { "softmax(5)", function() return t:softmax(5) end, "'softmax' %(dimension 5 out of range" },
  { "log_softmax(NaN)", function() return t:log_softmax(NAN) end, "'log_softmax' %(number has no integer representation%)" },
  { "transpose(1, 5)", function() return t:transpose(1, 5) end, "'transpose' %(dimension 5 out of range" },
  { "unsqueeze(99)", function() return t:unsqueeze(99) end, "'unsqueeze' %(dimension 99 out of range" },
  { "squeeze(0)", function() return t:squeeze(0) end, "'squeeze' %(dimension 0 does not exist" },
  { "size(3)", function() return t:size(3) end, "'size' %(dimension 3 out of range" },
  { "narrow out of range", function() return t:narrow(1, 5, 1) end, "narrow: start 5 and length 1 are out of range for dimension 1 of size 2" },
  { "narrow length -1", function() return t:narrow(1, 1, -1) end, "narrow: start 1 and length %-1 are out of range" },
  { "narrow length maxinteger", function() return t:narrow(1, 2, math.maxinteger) end, "narrow: start 2 and length 9223372036854775807 are out of range" },
  { "narrow start mininteger", function() return t:narrow(1, math.mininteger, 1) end, "narrow: start %-%d+ and length 1 are out of range" },
  { "select(1, 3)", function() return t:select(1, 3) end, "select: index 3 is out of range for dimension 1 of size 2" },
  { "select(1, 0)", function() return t:select(1, 0) end, "'select' %(index 0 does not exist: indices count from 1%)" },
  { "select(1, mininteger)", function() return t:select(1, math.mininteger) end, "select: index %-9223372036854775808 is out of range" },
  { "t[0]", function() return t[0] end, "index 0 does not exist: indices count from 1" },
  { "t[3]", function() return t[3] end, "index: index 3 is out of range for dimension 1 of size 2" },
  { "t[1.5]", function() return t[1.5] end, "number has no integer representation" },
  { "vector[mininteger]", function() return T.ones(3)[math.mininteger] end, "index %-9223372036854775808 is out of range for a tensor of size 3" },
  { "t[1] = 'x'", function() t[1] = "x" end, "bad argument #3 to 'newindex' %(number expected, got string%)" },
  { "t[0] = 1", function() t[0] = 1 end, "index 0 does not exist" },
  { "t.foo = 1", function() t.foo = 1 end, "tensor has no settable field 'foo'" },
  { "t.grad = 5", function() t.grad = 5 end, "grad: a gradient must be a tensor or nil, got number" },
  { "t.grad wrong shape", function() t.grad = T.ones(3) end, "grad: a gradient must have the tensor's shape and dtype" },
  { "#0-dim", function() return #T.tensor(1) end, "len%(%) of a 0%-dim tensor" },
  -- shapes
  { "view(4)", function() return t:view(4) end, "view: shape %[4%] is invalid for a tensor of shape %[2, 3%]" },
  { "view(-1, -1)", function() return t:view(-1, -1) end, "view: invalid shape %[%-1, %-1%]" },
  { "view(NaN)", function() return t:view(NAN) end, "view: size 1 must be an integer" },
  { "reshape({1<<40})", function() return t:reshape({ HUGE }) end, "reshape: shape %[1099511627776%] is invalid" },
  { "reshape('x')", function() return t:reshape("x") end, "reshape: size 1 must be an integer, got x" },
  { "permute(1)", function() return t:permute(1) end, "permute: 1 dimensions given for a tensor of 2" },
  { "permute(1, 1)", function() return t:permute(1, 1) end, "permute: dimension 1 repeats" },
  { "permute(0, 1)", function() return t:permute(0, 1) end, "'permute' %(dimensions count from 1%)" },
  { "expand(5, 5)", function() return t:expand(5, 5) end, "expand: cannot expand shape %[2, 3%] to %[5, 5%]" },
  { "expand 2^80 elements", function() return T.ones(1, 1):expand(HUGE, HUGE) end, "expand: shape %[1099511627776, 1099511627776%] is too large" },
  { "expand 2^62 elements", function() return T.ones(1, 1):expand(1 << 31, 1 << 31) end, "expand: shape .* is too large" },
  { "flatten(5)", function() return t:flatten(5) end, "flatten: start_dim must be a dimension from 1 to 2" },
  { "flatten('x')", function() return t:flatten("x") end, "flatten: start_dim must be a dimension from 1 to 2 %(or %-2 to %-1%), got x" },
  { "flatten(2, 1)", function() return t:flatten(2, 1) end, "flatten: start_dim 2 comes after end_dim 1" },
  { "split(0)", function() return t:split(0) end, "split: size must be an integer >= 1, got 0" },
  { "split(1, 5)", function() return t:split(1, 5) end, "split: dim must be a dimension from 1 to 2" },
  { "chunk(0)", function() return t:chunk(0) end, "chunk: the number of chunks must be an integer >= 1, got 0" },
  { "chunk(2, NaN)", function() return t:chunk(2, NAN) end, "chunk: dim must be a dimension" },
  { "unbind(9)", function() return t:unbind(9) end, "unbind: dim must be a dimension from 1 to 2" },
  { "var(9)", function() return t:var(9) end, "var: dim must be a dimension from 1 to 2" },
  { "std('x')", function() return t:std("x") end, "var: dim must be a dimension" },
  { "norm('x')", function() return t:norm("x") end, "norm: p must be a number, got x" },
  { "norm(NaN)", function() return t:norm(NAN) end, "norm: p must be a number" },
  -- math
  { "t + 'x'", function() return t + "x" end, "add: operand 2 must be a tensor or a number, got string" },
  { "'x' + t", function() return "x" + t end, "add: operand 1 must be a tensor or a number, got string" },
  { "t * {}", function() return t * {} end, "mul: operand 2 must be a tensor or a number, got table" },
  { "t - nil", function() return t - nil end, "sub: operand 2 must be a tensor or a number, got nil" },
  { "T.add(nil, nil)", function() return T.add(nil, nil) end, "add: expected a tensor operand, got nil and nil" },
  { "broadcast mismatch", function() return t * T.ones(4) end, "mul: shapes %[2, 3%] and %[4%] cannot be broadcast together" },
  { "pow('x')", function() return t:pow("x") end, "pow: operand 2 must be a tensor or a number, got string" },
  { "maximum(true)", function() return t:maximum(true) end, "maximum: operand 2 must be a tensor or a number, got boolean" },
  { "matmul mismatch", function() return t:matmul(T.ones(2, 2)) end, "matmul: shapes %[2, 3%] and %[2, 2%] cannot be multiplied" },
  { "matmul(nil)", function() return t:matmul(nil) end, "bad argument #1 to 'matmul' %(tensor expected, got nil%)" },
  { "mm 1-D", function() return T.mm(T.ones(2), T.ones(2)) end, "mm: shapes %[2%] and %[2%] cannot be multiplied" },
  { "addmm mismatch", function() return T.addmm(T.ones(2), T.ones(2, 3), T.ones(2, 3)) end, "addmm: shapes %[2, 3%] and %[2, 3%] cannot be multiplied" },
  { "addmm options 5", function() return T.addmm(T.ones(2), T.ones(2, 3), T.ones(3, 2), 5) end, "addmm: options must be a table, got number" },
  { "clamp('x')", function() return t:clamp("x") end, "bad argument #1 to 'clamp' %(number expected, got string%)" },
  { "item of 6 elements", function() return t:item() end, "item: only a tensor of one element converts to a number, not one of shape %[2, 3%]" },
  { "cat({})", function() return T.cat({}) end, "bad argument #1 to 'cat' %(expected a non%-empty list of tensors%)" },
  { "cat(nil)", function() return T.cat(nil) end, "bad argument #1 to 'cat' %(table expected, got nil%)" },
  { "cat({t, 5})", function() return T.cat({ t, 5 }) end, "'cat' %(element 2 is not a tensor%)" },
  { "cat shape mismatch", function() return T.cat({ t, T.ones(3) }) end, "cat: tensor 2 has shape %[3%], expected %[2, 3%]" },
  { "cat dim 9", function() return T.cat({ t }, 9) end, "'cat' %(dimension 9 out of range" },
  { "stack mismatch", function() return T.stack({ t, T.ones(3, 2) }) end, "stack: tensor 2 has shape %[3, 2%], expected %[2, 3%]" },
  { "stack dim 1<<40", function() return T.stack({ t }, HUGE) end, "'stack' %(dimension 1099511627776 out of range" },
  -- indexing ops: 1-based index tensors out of range
  { "gather float index", function() return t:gather(1, T.ones(2, 3)) end, "'gather' %(index must be an integer tensor, not float32%)" },
  { "gather index 5", function() return t:gather(1, T.tensor({ { 5, 1, 1 } })) end, "gather: index 5 is out of bounds for dimension 1 of size 2" },
  { "gather index -5", function() return t:gather(1, T.tensor({ { -5, 1, 1 } })) end, "gather: index %-5 is out of bounds" },
  { "scatter index 5", function() return t:scatter(1, T.tensor({ { 5, 1, 1 } }), 1) end, "scatter: index 5 is out of bounds for dimension 1 of size 2" },
  { "scatter_add index 9", function() return t:scatter_add(2, T.tensor({ { 9 } }), T.ones(1, 1)) end, "scatter: index 9 is out of bounds for dimension 2 of size 3" },
  { "index_select index 3", function() return t:index_select(1, T.tensor({ 3 })) end, "index_select: index 3 is out of range for dimension 1 of size 2" },
  { "index_select index 0", function() return t:index_select(1, T.tensor({ 0 })) end, "index_select: index 0 is out of range" },
  { "index_select bool index", function() return t:index_select(1, T.tensor({ true })) end, "index must be an integer tensor, not bool" },
  -- multinomial (Categorical's sampler)
  { "multinomial negative", function() return T.tensor({ -1.0, 2.0 }):multinomial(1) end, "multinomial: probabilities must be finite and non%-negative, found %-1" },
  { "multinomial NaN", function() return T.tensor({ NAN, 1.0 }):multinomial(1) end, "multinomial: probabilities must be finite and non%-negative, found %-?nan" },
  { "multinomial inf", function() return T.tensor({ math.huge, 1.0 }):multinomial(1) end, "multinomial: probabilities must be finite and non%-negative, found inf" },
  { "multinomial all zero", function() return T.zeros(3):multinomial(1) end, "multinomial: the probabilities of row 1 sum to zero" },
  { "multinomial n = -1", function() return T.ones(3):multinomial(-1) end, "multinomial: cannot draw %-1 samples" },
  { "multinomial n = NaN", function() return T.ones(3):multinomial(NAN) end, "'multinomial' %(number has no integer representation%)" },
  { "multinomial n = 1<<40", function() return T.ones(3):multinomial(HUGE, true) end, "multinomial: out of memory" },
  { "multinomial n = maxinteger", function() return T.ones(3):multinomial(math.maxinteger, true) end, "multinomial: shape %[9223372036854775807%] is too large" },
  { "multinomial 3-D", function() return T.ones(2, 2, 2):multinomial(1) end, "multinomial: probabilities must be 1%-D or 2%-D, not 3%-D" },
  -- conversions, devices
  { "to('float16')", function() return t:to("float16") end, "'to' %(unknown dtype 'float16'" },
  { "to({device='tpu'})", function() return t:to({ device = "tpu" }) end, "to: unknown device 'tpu'" },
  { "to({device=5.5})", function() return t:to({ device = 5.5 }) end, "to: device must be a string such as 'cpu' or 'cuda:0', got number" },
  { "cuda('x')", function() return t:cuda("x") end, "cuda: the device index must be an integer, got x" },
  -- in place
  { "copy_ mismatch", function() return t:clone():copy_(T.ones(5)) end, "copy_: source of shape %[5%] does not broadcast to %[2, 3%]" },
  { "copy_('x')", function() return t:clone():copy_("x") end, "'copy_' %(tensor or number expected, got string%)" },
  { "fill_('x')", function() return t:clone():fill_("x") end, "'fill_' %(number expected, got string%)" },
  { "fill_(nil)", function() return t:clone():fill_(nil) end, "'fill_' %(number expected, got nil%)" },
  { "add_ mismatch", function() return t:clone():add_(T.ones(5)) end, "add_: in%-place op: shape %[5%] does not broadcast to %[2, 3%]" },
  { "add_('x')", function() return t:clone():add_("x") end, "'add_' %(tensor or number expected, got string%)" },
  { "mul_(1, 'x')", function() return t:clone():mul_(1, "x") end, "'mul_' %(number expected, got string%)" },
  { "uniform_(1, 0)", function() return t:clone():uniform_(1, 0) end, "uniform_: expects a range %[from, to%) with from <= to" },
  { "uniform_(NaN)", function() return t:clone():uniform_(NAN, 1) end, "'uniform_' %(from must be a finite number" },
  { "normal_ std -1", function() return t:clone():normal_(0, -1) end, "'normal_' %(std must be >= 0%)" },
  { "normal_ mean NaN", function() return t:clone():normal_(NAN, 1) end, "'normal_' %(mean must be a finite number" },
  { "normal_ std inf", function() return t:clone():normal_(0, math.huge) end, "'normal_' %(std must be a finite number" },
  -- autograd
  { "requires_grad_ on int64", function() return T.ones(2, { dtype = "int64" }):requires_grad_() end, "requires_grad_: only float tensors can require grad, not int64" },
  { "backward of 2 elements", function() return T.ones(2, { requires_grad = true }):mul(2):backward() end, "backward: grad can be implicitly created only for a tensor of one element" },
  { "backward without grad", function() return T.ones(1):backward() end, "backward: the tensor does not require grad and has no grad_fn" },
  { "backward wrong gradient", function() local x = T.ones(2, { requires_grad = true }); (x * 2):backward(T.ones(3)) end, "backward: gradient of shape %[3%] for a tensor of shape %[2%]" },
  { "backward('x')", function() local x = T.ones(2, { requires_grad = true }); (x * 2):backward("x") end, "'backward' %(tensor expected, got string%)" },
  { "backward options 5", function() local x = T.ones(1, { requires_grad = true }); (x * 2):backward(nil, 5) end, "backward: options must be a table, got number" },
  -- dropout
  { "dropout p = 2", function() return T.dropout(t, 2) end, "dropout: probability must be in %[0, 1%], got 2" },
  { "dropout p = NaN", function() return T.dropout(t, NAN) end, "dropout: probability must be in %[0, 1%], got %-?nan" },
  { "dropout p = 'x'", function() return T.dropout(t, "x") end, "dropout: probability must be in %[0, 1%], got x" },
  { "dropout(nil)", function() return T.dropout(nil, 0.5) end, "dropout: input must be a tensor, got nil" },
  -- closed tensors
  { "closed: method", function() return closed_tensor():sum() end, "tensor was closed" },
  { "closed: operand 1", function() return closed_tensor() + 1 end, "'add' %(tensor was closed%)" },
  { "closed: operand 2", function() return t + closed_tensor() end, "'add' %(tensor was closed%)" },
  { "closed: in cat", function() return T.cat({ closed_tensor() }) end, "'cat' %(element 1 is a closed tensor%)" },
  { "closed: in tensor{}", function() return T.tensor({ closed_tensor() }) end, "tensor: a closed tensor inside the data" },
  { "closed: zeros_like", function() return T.zeros_like(closed_tensor()) end, "zeros_like: input must be a tensor, got a closed tensor" },
  { "closed: copy_ source", function() return t:clone():copy_(closed_tensor()) end, "'copy_' %(tensor was closed%)" },
  { "closed: as grad", function() local x = T.ones(2); x.grad = closed_tensor() end, "tensor was closed" },
}

describe("bad input: ember.tensor", function()
  counts.tensor = rows_of(tensor_rows)

  it("prints a closed tensor and says it is not a tensor", function()
    local c = closed_tensor()
    assert.equal("tensor(closed)", tostring(c))
    assert.is_false(T.is_tensor(c))
    alive()
  end)
end)

-- --- ember.nn ---------------------------------------------------------------------

local lin = nn.Linear(3, 2)
local emb = nn.Embedding(3, 2)
local lstm = nn.LSTM(3, 2)
local mse, ce = nn.MSELoss(), nn.CrossEntropyLoss()
local nn_rows = {
  { "Linear('a', 2)", function() return nn.Linear("a", 2) end, "Linear: in_features must be an integer >= 0, got a" },
  { "Linear(2) missing", function() return nn.Linear(2) end, "Linear: out_features must be an integer >= 0, got nil" },
  { "Linear(-1, 2)", function() return nn.Linear(-1, 2) end, "Linear: in_features must be an integer >= 0, got %-1" },
  { "Linear(NaN, 2)", function() return nn.Linear(NAN, 2) end, "Linear: in_features must be an integer >= 0, got %-?nan" },
  { "Linear(1<<40, 1<<40)", function() return nn.Linear(HUGE, HUGE) end, "shape %[1099511627776, 1099511627776%] is too large" },
  { "Linear options 5", function() return nn.Linear(2, 2, 5) end, "Linear: options must be a table, got number" },
  { "Linear int64", function() return nn.Linear(2, 2, { dtype = "int64" }) end, "only float tensors can require grad, not int64" },
  { "Linear dtype bogus", function() return nn.Linear(2, 2, { dtype = "bogus" }) end, "unknown dtype 'bogus'" },
  { "linear(nil)", function() return lin(nil) end, "linear: input must be a tensor, got nil" },
  { "linear(5)", function() return lin(5) end, "linear: input must be a tensor, got number" },
  { "linear wrong width", function() return lin(T.ones(4)) end, "linear: input of shape %[4%] does not match weight of shape %[2, 3%]" },
  { "F.linear weight nil", function() return nn.F.linear(T.ones(3), nil) end, "linear: weight must be a tensor, got nil" },
  { "Dropout(2)", function() return nn.Dropout(2) end, "Dropout: p must be a probability in %[0, 1%], got 2" },
  { "Dropout(NaN)", function() return nn.Dropout(NAN) end, "Dropout: p must be a probability in %[0, 1%], got %-?nan" },
  { "Dropout('x')", function() return nn.Dropout("x") end, "Dropout: p must be a probability in %[0, 1%], got x" },
  { "Softmax('x')", function() return nn.Softmax("x") end, "Softmax: dim must be a non%-zero integer, got x" },
  { "LogSoftmax(0)", function() return nn.LogSoftmax(0) end, "LogSoftmax: dim must be a non%-zero integer, got 0" },
  { "Softmax(5) forward", function() return nn.Softmax(5)(T.ones(2)) end, "'softmax' %(dimension 5 out of range" },
  { "Sequential(5)", function() return nn.Sequential(5) end, "Sequential: argument 1 is not a Module %(got number%)" },
  { "Sequential(m, 'x')", function() return nn.Sequential(nn.ReLU(), "x") end, "Sequential: argument 2 is not a Module %(got string%)" },
  { "Embedding(0, 2)", function() return nn.Embedding(0, 2) end, "Embedding: num_embeddings must be an integer >= 1, got 0" },
  { "Embedding(2, NaN)", function() return nn.Embedding(2, NAN) end, "Embedding: embedding_dim must be an integer >= 1" },
  { "Embedding(1<<40, 1<<40)", function() return nn.Embedding(HUGE, HUGE) end, "is too large" },
  { "Embedding options 5", function() return nn.Embedding(2, 2, 5) end, "Embedding: options must be a table, got number" },
  { "embedding index 5", function() return emb(T.tensor({ 5 })) end, "Embedding: indices out of range 1..3: 5" },
  { "embedding index 0", function() return emb(T.tensor({ 0 })) end, "Embedding: indices out of range 1..3: 0" },
  { "embedding float", function() return emb(T.ones(2)) end, "Embedding: indices must be an integer tensor, got float32" },
  { "embedding nil", function() return emb(nil) end, "Embedding: indices must be an integer tensor, got nil" },
  { "LSTM('a', 2)", function() return nn.LSTM("a", 2) end, "LSTM: input_size must be an integer >= 1, got a" },
  { "LSTM num_layers 0", function() return nn.LSTM(2, 2, { num_layers = 0 }) end, "LSTM: num_layers must be an integer >= 1, got 0" },
  { "LSTM num_layers NaN", function() return nn.LSTM(2, 2, NAN) end, "LSTM: num_layers must be an integer >= 1" },
  { "LSTM options 'x'", function() return nn.LSTM(2, 2, "x") end, "LSTM: options must be a table, got string" },
  { "LSTM dropout NaN", function() return nn.LSTM(2, 2, { dropout = NAN }) end, "LSTM: dropout must be a probability in %[0, 1%]" },
  { "LSTM dropout 2", function() return nn.LSTM(2, 2, { dropout = 2 }) end, "LSTM: dropout must be a probability in %[0, 1%], got 2" },
  { "lstm(nil)", function() return lstm(nil) end, "LSTM: input must be a tensor, got nil" },
  { "lstm wrong size", function() return lstm(T.ones(3, 5)) end, "LSTM: input of shape %[3, 5%] must be %[seq, batch, 3%]" },
  { "lstm state 5", function() return lstm(T.ones(4, 3), 5) end, "LSTM: the state must be a table {h0, c0}, got number" },
  { "lstm h0 'x'", function() return lstm(T.ones(4, 3), { "x" }) end, "LSTM: h0 must be a tensor, got string" },
  { "lstm h0 wrong shape", function() return lstm(T.ones(4, 3), { T.ones(9) }) end, "LSTM: h0 of shape %[9%], expected %[1, 2%]" },
  { "MSELoss reduction 'x'", function() return nn.MSELoss({ reduction = "x" }) end, "MSELoss: reduction must be 'mean', 'sum' or 'none', got 'x'" },
  { "MSELoss options 5", function() return nn.MSELoss(5) end, "MSELoss: options must be a table, got number" },
  { "mse(nil, t)", function() return mse(nil, T.ones(2)) end, "mse_loss: input must be a tensor, got nil" },
  { "mse(t, 5)", function() return mse(T.ones(2), 5) end, "mse_loss: target must be a tensor, got number" },
  { "mse shapes differ", function() return mse(T.ones(3), T.ones(2)) end, "mse_loss: input of shape %[3%] and target of shape %[2%] differ" },
  { "cross_entropy(nil)", function() return ce(nil, T.tensor({ 1 })) end, "cross_entropy: input must be a tensor, got nil" },
  { "cross_entropy target nil", function() return ce(T.ones(1, 3), nil) end, "cross_entropy: target must be an integer tensor of class indices, got nil" },
  { "cross_entropy class 5", function() return ce(T.ones(1, 3), T.tensor({ 5 })) end, "cross_entropy: target class 5 is out of range 1..3" },
  { "cross_entropy class 0", function() return ce(T.ones(1, 3), T.tensor({ 0 })) end, "cross_entropy: target class 0 is out of range 1..3" },
  { "cross_entropy prob shape", function() return ce(T.ones(1, 3), T.ones(2)) end, "cross_entropy: probability target of shape %[2%] does not match" },
  { "nll_loss(5)", function() return nn.F.nll_loss(5, T.tensor({ 1 })) end, "nll_loss: input must be a tensor, got number" },
  { "init.uniform_(nil)", function() return nn.init.uniform_(nil) end, "nn.init.uniform_: t must be a tensor, got nil" },
  { "init.normal_(5)", function() return nn.init.normal_(5) end, "nn.init.normal_: t must be a tensor, got number" },
  { "init.constant_(t, 'x')", function() return nn.init.constant_(T.ones(2), "x") end, "'fill_' %(number expected, got string%)" },
  { "init.kaiming_uniform_ 1-D", function() return nn.init.kaiming_uniform_(T.ones(3)) end, "kaiming_uniform_: fan in and fan out need a tensor of at least 2 dims" },
  { "init.xavier_normal_(nil)", function() return nn.init.xavier_normal_(nil) end, "xavier_normal_: t must be a tensor, got nil" },
  { "clip_grad_norm_(5)", function() return nn.utils.clip_grad_norm_(5, 1) end, "clip_grad_norm_: params must be a module, a tensor or a list of tensors, got number" },
  { "clip_grad_norm_ {5}", function() return nn.utils.clip_grad_norm_({ 5 }, 1) end, "clip_grad_norm_: params%[1%] is not a tensor" },
  { "clip_grad_norm_ max 'x'", function() return nn.utils.clip_grad_norm_(lin, "x") end, "clip_grad_norm_: max_norm must be a number >= 0, got x" },
  { "clip_grad_norm_ max NaN", function() return nn.utils.clip_grad_norm_(lin, NAN) end, "clip_grad_norm_: max_norm must be a number >= 0" },
  { "clip_grad_norm_ norm 0", function() return nn.utils.clip_grad_norm_(lin, 1, 0) end, "clip_grad_norm_: norm_type must be a number > 0, got 0" },
  { "parameters_to_vector('x')", function() return nn.utils.parameters_to_vector("x") end, "parameters_to_vector: params must be a module" },
  { "module:to('tpu')", function() return lin:to("tpu") end, "unknown dtype 'tpu'" },
  { "load_state_dict(5)", function() return lin:load_state_dict(5) end, "load_state_dict: state_dict must be a table, got number" },
  { "load_state_dict weight 5", function() return lin:load_state_dict({ weight = 5 }) end, "load_state_dict: error%(s%) loading into Linear: size mismatch: 'weight' is a number, not a tensor" },
  { "add_module('x', 5)", function() return lin:add_module("x", 5) end, "add_module: 'x' must be a Module, got number" },
  { "add_module(5, m)", function() return lin:add_module(5, nn.ReLU()) end, "add_module: the name must be a non%-empty string, got 5" },
  { "register_parameter('x', 5)", function() return lin:register_parameter("x", 5) end, "register_parameter: 'x' must be a tensor or nil, got number" },
  { "register_parameter(5, t)", function() return lin:register_parameter(5, T.ones(1)) end, "register_parameter: the name must be a non%-empty string, got 5" },
  { "register_buffer(nil, t)", function() return lin:register_buffer(nil, T.ones(1)) end, "register_buffer: the name must be a non%-empty string, got nil" },
  { "apply(5)", function() return lin:apply(5) end, "apply: expected a function%(module%), got number" },
  { "m.weight = 5", function() lin.weight = 5 end, "cannot assign number to parameter 'weight'" },
  { "Module:extend(5)", function() return nn.Module:extend(5) end, "extend: the class name must be a string, got number" },
  { "Module without forward", function() return nn.Module()(1) end, "Module: forward is not defined" },
}

describe("bad input: ember.nn", function()
  counts.nn = rows_of(nn_rows)
end)

-- --- ember.optim ---------------------------------------------------------------

local params = nn.Linear(3, 2):parameters()
local sgd = optim.SGD(params, { lr = 0.1 })
local optim_rows = {
  { "SGD(nil)", function() return optim.SGD(nil, { lr = 0.1 }) end, "SGD: params must be a list of tensors or of parameter groups, got nil" },
  { "SGD({})", function() return optim.SGD({}, { lr = 0.1 }) end, "SGD: got an empty parameter list" },
  { "SGD({5})", function() return optim.SGD({ 5 }, { lr = 0.1 }) end, "SGD: params%[1%] is not a tensor %(got number%)" },
  { "SGD no requires_grad", function() return optim.SGD({ T.ones(2) }, { lr = 0.1 }) end, "SGD: params%[1%] does not require grad" },
  { "SGD non-leaf", function() return optim.SGD({ T.ones(2, { requires_grad = true }) * 2 }, { lr = 0.1 }) end, "SGD: params%[1%] is not a leaf tensor" },
  { "SGD no lr", function() return optim.SGD(params) end, "SGD: lr is required" },
  { "SGD lr -1", function() return optim.SGD(params, { lr = -1 }) end, "SGD: invalid lr %-1 %(must be >= 0%)" },
  { "SGD lr NaN", function() return optim.SGD(params, { lr = NAN }) end, "SGD: invalid lr %-?nan" },
  { "SGD lr 'x'", function() return optim.SGD(params, { lr = "x" }) end, "SGD: invalid lr x" },
  { "SGD momentum NaN", function() return optim.SGD(params, { lr = 0.1, momentum = NAN }) end, "SGD: invalid momentum %-?nan" },
  { "SGD weight_decay -1", function() return optim.SGD(params, { lr = 0.1, weight_decay = -1 }) end, "SGD: invalid weight_decay %-1" },
  { "SGD dampening 'x'", function() return optim.SGD(params, { lr = 0.1, dampening = "x" }) end, "SGD: invalid dampening x" },
  { "SGD nesterov without momentum", function() return optim.SGD(params, { lr = 0.1, nesterov = true }) end, "SGD: nesterov momentum needs momentum > 0" },
  { "SGD options 5", function() return optim.SGD(params, 5) end, "SGD: options must be a table, got number" },
  { "Adam lr NaN", function() return optim.Adam(params, { lr = NAN }) end, "Adam: invalid lr %-?nan" },
  { "Adam eps NaN", function() return optim.Adam(params, { eps = NAN }) end, "Adam: invalid eps %-?nan" },
  { "Adam betas {NaN, 0.9}", function() return optim.Adam(params, { betas = { NAN, 0.9 } }) end, "Adam: invalid beta1 %-?nan" },
  { "Adam betas {0.9, 1}", function() return optim.Adam(params, { betas = { 0.9, 1 } }) end, "Adam: invalid beta2 1 %(must be in %[0, 1%)%)" },
  { "Adam betas 'x'", function() return optim.Adam(params, { betas = "x" }) end, "Adam: betas must be a table {beta1, beta2}" },
  { "Adam options 'x'", function() return optim.Adam(params, "x") end, "Adam: options must be a table, got string" },
  { "step('x')", function() return sgd:step("x") end, "SGD:step: closure must be a function, got string" },
  { "load_state_dict(5)", function() return sgd:load_state_dict(5) end, "SGD:load_state_dict: expected a table with state and param_groups" },
  { "load_state_dict groups {5}", function() return sgd:load_state_dict({ param_groups = { 5 } }) end, "SGD:load_state_dict: param_groups%[1%] must be a table with a params list, got number" },
  { "load_state_dict 2 groups", function() return sgd:load_state_dict({ param_groups = { {}, {} } }) end, "SGD:load_state_dict: the state_dict has 2 parameter groups, the optimizer 1" },
  { "load_state_dict state 5", function() return sgd:load_state_dict({ state = 5, param_groups = { { params = {} } } }) end, "SGD:load_state_dict: state must be a table, got number" },
  { "add_param_group(5)", function() return sgd:add_param_group(5) end, "SGD:add_param_group: expected a table {params = ..., %[options%]}, got number" },
  { "add_param_group duplicate", function() return sgd:add_param_group({ params = params }) end, "SGD: params%[1%] appears more than once" },
  { "add_param_group lr NaN", function() return sgd:add_param_group({ params = { T.ones(1, { requires_grad = true }) }, lr = NAN }) end, "SGD: invalid lr %-?nan" },
}

describe("bad input: ember.optim", function()
  counts.optim = rows_of(optim_rows)
end)

-- --- ember.distributions ----------------------------------------------------------

local Categorical = distributions.Categorical
local cat = Categorical(T.tensor({ 0.5, 0.5 }))
local distributions_rows = {
  { "Categorical(nil)", function() return Categorical(nil) end, "Categorical: pass exactly one of {probs = tensor} or {logits = tensor}" },
  { "Categorical both", function() return Categorical({ probs = T.ones(2), logits = T.ones(2) }) end, "Categorical: pass exactly one of" },
  { "Categorical probs 5", function() return Categorical({ probs = 5 }) end, "Categorical: probs must be a tensor, got number" },
  { "Categorical empty", function() return Categorical(T.ones(0)) end, "Categorical: probs must have at least one dim with at least one category, got shape %[0%]" },
  { "Categorical 0-dim", function() return Categorical(T.tensor(1.0)) end, "Categorical: probs must have at least one dim" },
  { "Categorical int64", function() return Categorical({ probs = T.tensor({ 1, 2 }) }) end, "Categorical: probs must be a float tensor, got int64" },
  { "sample of negative probs", function() return Categorical(T.tensor({ -1.0, 2.0 })):sample() end, "multinomial: probabilities must be finite and non%-negative, found %-1" },
  { "sample of NaN probs", function() return Categorical(T.tensor({ NAN, 2.0 })):sample() end, "multinomial: probabilities must be finite and non%-negative" },
  { "sample of NaN logits", function() return Categorical({ logits = T.tensor({ NAN, 2.0 }) }):sample() end, "multinomial: probabilities must be finite and non%-negative" },
  { "sample('x')", function() return cat:sample("x") end, "Categorical:sample: sample_shape must be an integer or a list of integers, got string" },
  { "sample(-1)", function() return cat:sample(-1) end, "Categorical:sample: sample_shape%[1%] must be an integer >= 0, got %-1" },
  { "sample(NaN)", function() return cat:sample(NAN) end, "Categorical:sample: sample_shape%[1%] must be an integer >= 0" },
  { "sample(1.5)", function() return cat:sample(1.5) end, "Categorical:sample: sample_shape%[1%] must be an integer >= 0, got 1.5" },
  { "sample({2, -1})", function() return cat:sample({ 2, -1 }) end, "Categorical:sample: sample_shape%[2%] must be an integer >= 0, got %-1" },
  { "sample(1<<40)", function() return cat:sample(HUGE) end, "multinomial: out of memory" },
  { "log_prob(nil)", function() return cat:log_prob(nil) end, "Categorical:log_prob: value must be an integer tensor or integer, got nil" },
  { "log_prob('x')", function() return cat:log_prob("x") end, "Categorical:log_prob: value must be an integer tensor or integer, got string" },
  { "log_prob(5)", function() return cat:log_prob(5) end, "Categorical:log_prob: category 5 is out of range 1..2" },
  { "log_prob(0)", function() return cat:log_prob(0) end, "Categorical:log_prob: category 0 is out of range 1..2" },
  { "log_prob(1.5 tensor)", function() return cat:log_prob(T.tensor({ 1.5 })) end, "Categorical:log_prob: value holds non%-integer categories" },
  { "log_prob(NaN tensor)", function() return cat:log_prob(T.tensor({ NAN })) end, "Categorical:log_prob: value holds non%-integer categories" },
  { "log_prob batch mismatch", function() return Categorical(T.ones(2, 3)):log_prob(T.tensor({ 1, 1, 1 })) end, "Categorical:log_prob: value of shape %[3%] does not broadcast with batch shape %[2%]" },
}

describe("bad input: ember.distributions", function()
  counts.distributions = rows_of(distributions_rows)
end)

-- --- ember.envs -------------------------------------------------------------------

local function reset_env()
  local env = envs.make("CartPole-v1", { seed = 1 })
  env:reset()
  return env
end

local envs_rows = {
  { "make(nil)", function() return envs.make(nil) end, "ember.envs.make: unknown environment nil %(a nil%)" },
  { "make('nope')", function() return envs.make("nope") end, "ember.envs.make: unknown environment \"nope\"; known environments: CartPole%-v1" },
  { "make options 5", function() return envs.make("CartPole-v1", 5) end, "CartPole: options must be a table, got number" },
  { "make seed 'x'", function() return envs.make("CartPole-v1", { seed = "x" }) end, "CartPole:seed: seed must be an integer, got x" },
  { "make seed NaN", function() return envs.make("CartPole-v1", { seed = NAN }) end, "CartPole:seed: seed must be an integer, got %-?nan" },
  { "make max_episode_steps 0", function() return envs.make("CartPole-v1", { max_episode_steps = 0 }) end, "CartPole: max_episode_steps must be a positive integer, got 0" },
  { "make max_episode_steps NaN", function() return envs.make("CartPole-v1", { max_episode_steps = NAN }) end, "CartPole: max_episode_steps must be a positive integer" },
  { "make unknown option", function() return envs.make("CartPole-v1", { bogus = 1 }) end, "CartPole: unknown option \"bogus\"" },
  { "step before reset", function() return envs.make("CartPole-v1"):step(1) end, "CartPole: step%(%) called before reset%(%)" },
  { "step(nil)", function() return reset_env():step(nil) end, "CartPole: invalid action nil; valid actions are 1 %(push left%) and 2 %(push right%)" },
  { "step(0)", function() return reset_env():step(0) end, "CartPole: invalid action 0" },
  { "step(3)", function() return reset_env():step(3) end, "CartPole: invalid action 3" },
  { "step(NaN)", function() return reset_env():step(NAN) end, "CartPole: invalid action %-?nan" },
  { "step(1.5)", function() return reset_env():step(1.5) end, "CartPole: invalid action 1.5" },
  { "step('x')", function() return reset_env():step("x") end, "CartPole: invalid action \"x\"" },
  { "step(2-element tensor)", function() return reset_env():step(T.tensor({ 1, 2 })) end, "CartPole: invalid action tensor" },
  { "state = 5", function() local env = reset_env(); env.state = 5; return env:step(1) end, "CartPole: env.state must be a table of 4 numbers" },
  { "state of 3", function() local env = reset_env(); env.state = { 0, 0, 0 }; return env:step(1) end, "CartPole: env.state must hold exactly 4 numbers" },
  { "state with NaN", function() local env = reset_env(); env.state = { NAN, 0, 0, 0 }; return env:step(1) end, "CartPole: env.state%[1%] must be a finite number, got %-?nan" },
  { "state with inf", function() local env = reset_env(); env.state = { 0, 0, math.huge, 0 }; return env:step(1) end, "CartPole: env.state%[3%] must be a finite number, got inf" },
  { "seed('x')", function() return reset_env():seed("x") end, "CartPole:seed: seed must be an integer, got x" },
  { "register(5, f)", function() return envs.register(5, function() end) end, "ember.envs.register: name must be a non%-empty string, got 5" },
  { "register('x', 5)", function() return envs.register("x", 5) end, "ember.envs.register: \"x\" needs a module name, a module with new%(opts%) or a constructor function, got number" },
}

describe("bad input: ember.envs", function()
  counts.envs = rows_of(envs_rows)
end)

-- --- ember.futures, ember.spawn/sleep/after --------------------------------------------

local Future = futures.Future
local function done_future()
  local f = Future()
  f:set_result(1)
  return f
end

local futures_rows = {
  { "wait_all(nil)", function() return futures.wait_all(nil) end, "wait_all: expected a list of futures, got nil" },
  { "wait_all({5})", function() return futures.wait_all({ 5 }) end, "wait_all: list%[1%] is not a future %(number%)" },
  { "collect_all(nil)", function() return futures.collect_all(nil) end, "collect_all: expected a list of futures, got nil" },
  { "collect_all({f, 1})", function() return futures.collect_all({ done_future(), 1 }) end, "collect_all: list%[2%] is not a future %(number%)" },
  { "wait_any(nil)", function() return futures.wait_any(nil) end, "wait_any: expected a list of futures, got nil" },
  { "wait_any options 5", function() return futures.wait_any({ done_future() }, 5) end, "wait_any: options must be a table, got number" },
  { "wait_any count 2 of 1", function() return futures.wait_any({ done_future() }, { count = 2 }) end, "wait_any: count must be an integer from 0 to 1 %(the list's length%), got 2" },
  { "wait_any count NaN", function() return futures.wait_any({ done_future() }, { count = NAN }) end, "wait_any: count must be an integer from 0 to 1" },
  { "wait_any count -1", function() return futures.wait_any({ done_future() }, { count = -1 }) end, "wait_any: count must be an integer from 0 to 1" },
  { "wait_any timeout -1", function() return futures.wait_any({ Future() }, { timeout = -1 }) end, "wait_any: timeout must be a number of seconds >= 0, got %-1" },
  { "wait_any timeout NaN", function() return futures.wait_any({ Future() }, { timeout = NAN }) end, "wait_any: timeout must be a number of seconds >= 0, got %-?nan" },
  { "wait_any timeout 'x'", function() return futures.wait_any({ Future() }, { timeout = "x" }) end, "wait_any: timeout must be a number of seconds >= 0, got x" },
  { "set_result twice", function() return done_future():set_result(2) end, "set_result: the future was already completed" },
  { "set_exception(nil)", function() return Future():set_exception(nil) end, "bad argument #1 to 'set_exception' %(an error value expected, got nil%)" },
  { "set_exception after result", function() return done_future():set_exception("e") end, "set_exception: the future was already completed" },
  { "add_done_callback(5)", function() return Future():add_done_callback(5) end, "bad argument #1 to 'add_done_callback' %(function expected, got number%)" },
  { "next(nil)", function() return Future():next(nil) end, "bad argument #1 to 'next' %(function expected, got nil%)" },
  { "then(5)", function() local f = Future(); return f["then"](f, 5) end, "bad argument #2 to 'then' %(function expected, got number%)" },
  { "wait on a number", function() return Future().wait(5) end, "bad argument #1 to 'wait' %(ember.Future expected, got number%)" },
  { "done(nil)", function() return Future().done(nil) end, "bad argument #1 to 'done' %(ember.Future expected, got nil%)" },
  { "value of a pending future", function() return Future():value() end, "value%(%) on a pending future; use wait%(%)" },
  { "wait that can never complete", function() return Future():wait() end, "wait%(%): the future can never complete" },
  { "spawn(5)", function() return ember.spawn(5) end, "bad argument #1 to 'spawn' %(function expected, got number%)" },
  { "spawn(nil)", function() return ember.spawn(nil) end, "bad argument #1 to 'spawn' %(function expected, got nil%)" },
  { "after(-1, f)", function() return ember.after(-1, print) end, "ember.after: seconds must be a number from 0 to 1e9, got %-1" },
  { "after(NaN, f)", function() return ember.after(NAN, print) end, "ember.after: seconds must be a number from 0 to 1e9, got %-?nan" },
  { "after(math.huge, f)", function() return ember.after(math.huge, print) end, "ember.after: seconds must be a number from 0 to 1e9, got inf" },
  { "after(1, 5)", function() return ember.after(1, 5) end, "ember.after: fn must be a function, got number" },
  { "sleep('x')", function() return ember.sleep("x") end, "ember.sleep: seconds must be a number from 0 to 1e9, got x" },
  { "sleep(2^63)", function() return ember.sleep(2 ^ 63) end, "ember.sleep: seconds must be a number from 0 to 1e9" },
}

describe("bad input: ember.futures", function()
  counts.futures = rows_of(futures_rows)

  it("takes a timeout too long for a timer as no timeout", function()
    local done, pending = futures.wait_any({ done_future(), Future() },
      { timeout = math.huge })
    assert.equal(1, #done)
    assert.equal(1, #pending)
    alive()
  end)
end)

-- --- RPC before init_rpc ---------------------------------------------------------------

local function rpc_down()
  assert.is_false(rpc.is_initialized())
  alive()
end

local before_init_rows = {
  { "rpc_sync", function() return rpc.rpc_sync("w", print, {}) end, "rpc_sync: RPC is not initialised %(call rpc.init_rpc first%)" },
  { "rpc_async", function() return rpc.rpc_async("w", print, {}) end, "rpc_async: RPC is not initialised" },
  { "remote", function() return rpc.remote("w", print) end, "remote: RPC is not initialised" },
  { "RRef", function() return rpc.RRef(1) end, "RRef: RPC is not initialised" },
  { "get_worker_info", function() return rpc.get_worker_info() end, "get_worker_info: RPC is not initialised" },
  { "get_worker_infos", function() return rpc.get_worker_infos() end, "get_worker_infos: RPC is not initialised" },
  { "stats", function() return rpc.stats() end, "stats: RPC is not initialised" },
  { "shutdown", function() return rpc.shutdown() end, "shutdown: RPC is not initialised" },
  { "dist_autograd.new_context", function() return dist_autograd.new_context() end, "dist_autograd.new_context: RPC is not initialised" },
  { "dist_autograd.context", function() return dist_autograd.context(function() end) end, "dist_autograd.new_context: RPC is not initialised" },
  { "dist_autograd.backward", function() return dist_autograd.backward(1, {}) end, "dist_autograd.backward: RPC is not initialised" },
  { "dist_autograd.get_gradients", function() return dist_autograd.get_gradients(1) end, "dist_autograd.get_gradients: RPC is not initialised" },
  { "parameter_rrefs", function() return dist_optim.parameter_rrefs({ T.ones(1, { requires_grad = true }) }) end, "RRef: RPC is not initialised" },
  { "init_rpc(5)", function() return rpc.init_rpc(5) end, "init_rpc: name must be a non%-empty string" },
  { "init_rpc('')", function() return rpc.init_rpc("") end, "init_rpc: name must be a non%-empty string" },
  { "init_rpc options 5", function() return rpc.init_rpc("x", 5) end, "init_rpc: options must be a table, got number" },
  { "init_rpc rank NaN", function() return rpc.init_rpc("x", { rank = NAN, world_size = 1 }) end, "init_rpc: rank must be an integer, got %-?nan" },
  { "init_rpc rank 'x'", function() return rpc.init_rpc("x", { rank = "x", world_size = 1 }) end, "init_rpc: rank must be an integer, got x" },
  { "init_rpc world_size 0", function() return rpc.init_rpc("x", { rank = 0, world_size = 0 }) end, "init_rpc: world_size must be >= 1, got 0" },
  { "init_rpc rank = world_size", function() return rpc.init_rpc("x", { rank = 1, world_size = 1 }) end, "init_rpc: rank 1 is not below world_size 1" },
  { "init_rpc master_port NaN", function() return rpc.init_rpc("x", { rank = 0, world_size = 1, master_port = NAN }) end, "init_rpc: master_port must be an integer" },
  { "init_rpc busy_poll_us -1", function() return rpc.init_rpc("x", { rank = 0, world_size = 1, busy_poll_us = -1 }) end, "init_rpc: busy_poll_us must be a whole number" },
  { "init_rpc timeout NaN", function() return rpc.init_rpc("x", { rank = 0, world_size = 1, timeout = NAN }) end, "init_rpc: timeout must be a number of seconds >= 0" },
  { "init_rpc master_addr 5", function() return rpc.init_rpc("x", { rank = 0, world_size = 1, master_addr = 5 }) end, "init_rpc: master_addr must be a host name or address, got number" },
  { "init_rpc master_port 2^40", function() return rpc.init_rpc("x", { rank = 0, world_size = 1, master_port = 1 << 40 }) end, "init_rpc: master_port must be a port from 1 to 65535" },
  { "init_rpc listen 5", function() return rpc.init_rpc("x", { rank = 0, world_size = 1, listen = 5 }) end, "init_rpc: listen must be an address such as 0.0.0.0 or 10.0.0.5, got number" },
  { "init_rpc faults 'drop:x'", function() return rpc.init_rpc("x", { rank = 0, world_size = 1, faults = "drop:x" }) end, "init_rpc: bad faults" },
  { "init_rpc heartbeat_window NaN", function() return rpc.init_rpc("x", { rank = 0, world_size = 1, heartbeat_window = NAN }) end, "init_rpc: heartbeat_window must be a number of seconds > 0" },
  { "init_rpc device_maps 5", function() return rpc.init_rpc("x", { rank = 0, world_size = 1, device_maps = 5 }) end, "init_rpc: device_maps must be a table" },
  { "async_execution(5)", function() return rpc.functions.async_execution(5) end, "async_execution: expected a function, got number" },
  { "batched(5)", function() return rpc.batched(5) end, "rpc.batched: expected a function, got number" },
  { "batched max_size 0", function() return rpc.batched(print, { max_size = 0 }) end, "rpc.batched: max_size must be an integer >= 1, got 0" },
  { "batched max_delay NaN", function() return rpc.batched(print, { max_size = 1, max_delay = NAN }) end, "rpc.batched: max_delay must be a number of seconds" },
  { "batched options 5", function() return rpc.batched(print, 5) end, "rpc.batched: options must be a table" },
  { "register_class(5, mt)", function() return rpc.register_class(5, {}) end, "register_class: name must be a non%-empty string" },
  { "register_class('x', 5)", function() return rpc.register_class("x", 5) end, "register_class: mt must be a metatable %(a table%)" },
}

describe("bad input: rpc before init_rpc", function()
  counts.rpc_before_init = rows_of(before_init_rows, rpc_down)

end)

-- --- RPC in a world of one worker ------------------------------------------------------

-- Functions a call can name: reachable from package.loaded.
local FUNCS = "spec.bad_input_funcs"
local funcs = {}
function funcs.echo(...) return table.pack(...) end
function funcs.count(...) return select("#", ...) end
function funcs.boom() error("boom") end
package.loaded[FUNCS] = funcs

local function rpc_up()
  assert.is_true(rpc.is_initialized())
  assert.equal(2, rpc.rpc_sync("solo", funcs.echo, { 1, 2 }).n)
  alive()
end

local function cycle()
  local c = {}
  c.self = c
  return c
end

local owned = nil -- an RRef made once the world is up
local solo_rows = {
  { "init_rpc again", function() return rpc.init_rpc("solo", { rank = 0, world_size = 1 }) end, "init_rpc: already initialised as 'solo'" },
  -- to
  { "to nil", function() return rpc.rpc_sync(nil, funcs.echo) end, "rpc_sync: 'to' must be a worker name, WorkerInfo or id, got nil" },
  { "to {}", function() return rpc.rpc_sync({}, funcs.echo) end, "rpc_sync: 'to' must be a worker name, WorkerInfo or id, got table" },
  { "to 'nobody'", function() return rpc.rpc_sync("nobody", funcs.echo) end, "rpc_sync: no worker named 'nobody'" },
  { "to id 5", function() return rpc.rpc_sync(5, funcs.echo) end, "rpc_sync: no worker with id 5 %(ids are 0 to 0%)" },
  { "to id -1", function() return rpc.rpc_async(-1, funcs.echo) end, "rpc_async: no worker with id %-1" },
  { "to id NaN", function() return rpc.rpc_sync(NAN, funcs.echo) end, "rpc_sync: no worker with id %-?nan" },
  { "to id 2^63", function() return rpc.rpc_sync(2 ^ 63, funcs.echo) end, "rpc_sync: no worker with id 9%.22" },
  -- fn
  { "fn 5", function() return rpc.rpc_sync("solo", 5) end, "rpc_sync: fn must be a function or a 'module:path' string, got number" },
  { "fn nil", function() return rpc.rpc_async("solo", nil) end, "rpc_async: fn must be a function or a 'module:path' string, got nil" },
  { "fn not reachable", function() return rpc.rpc_sync("solo", function() end) end, "rpc_sync: the function is not reachable" },
  { "fn of Lua's (os.exit)", function() return rpc.rpc_sync("solo", os.exit) end, "rpc_sync: the function is not reachable" },
  { "fn 'nomodule'", function() return rpc.rpc_sync("solo", "nomodule") end, "unknown function 'nomodule': cannot load module 'nomodule'" },
  { "fn 'x:y'", function() return rpc.rpc_sync("solo", "x:y") end, "unknown function 'x:y': cannot load module 'x'" },
  { "fn 'os:exit'", function() return rpc.rpc_sync("solo", "os:exit") end, "'os:exit' may not be called remotely" },
  { "fn raises", function() return rpc.rpc_sync("solo", funcs.boom) end, "RemoteError on worker 'solo': .*boom" },
  -- args
  { "args 5", function() return rpc.rpc_sync("solo", funcs.echo, 5) end, "rpc_sync: args must be a table %(a list%), got number" },
  { "args 'x'", function() return rpc.rpc_async("solo", funcs.echo, "x") end, "rpc_async: args must be a table %(a list%), got string" },
  { "args a function", function() return rpc.rpc_sync("solo", funcs.echo, print) end, "rpc_sync: args must be a table %(a list%), got function" },
  { "args.n = -1", function() return rpc.rpc_sync("solo", funcs.echo, { n = -1 }) end, "rpc_sync: args.n must be an integer >= 0 %(the number of arguments%), got %-1" },
  { "args.n = NaN", function() return rpc.rpc_sync("solo", funcs.echo, { n = NAN }) end, "rpc_sync: args.n must be an integer >= 0" },
  { "args with a coroutine", function() return rpc.rpc_sync("solo", funcs.echo, { 1, { co = coroutine.create(print) } }) end, "rpc_sync: args%[2%]%.co: cannot send a thread" },
  { "args with a userdata", function() return rpc.rpc_sync("solo", funcs.echo, { io.stdout }) end, "rpc_sync: args%[1%]: cannot send a userdata" },
  { "args with an unreachable function", function() return rpc.rpc_sync("solo", funcs.echo, { function() end }) end, "rpc_sync: args%[1%]: the function is not reachable" },
  { "args with a cycle", function() return rpc.rpc_sync("solo", funcs.echo, { cycle() }) end, "rpc_sync: args%[1%]%.self: a cycle" },
  { "args with a function key", function() return rpc.rpc_sync("solo", funcs.echo, { { [print] = 1 } }) end, "rpc_sync: args%[1%]: a table key of type function cannot be sent" },
  { "args with an unregistered class", function() return rpc.rpc_sync("solo", funcs.echo, { setmetatable({}, {}) }) end, "rpc_sync: args%[1%]: a table with a metatable that is not registered" },
  { "args with a closed tensor", function() return rpc.rpc_sync("solo", funcs.echo, { closed_tensor() }) end, "rpc_sync: args%[1%]: cannot send a userdata" },
  -- options
  { "options 5", function() return rpc.rpc_sync("solo", funcs.echo, {}, 5) end, "rpc_sync: options must be a table, got number" },
  { "timeout NaN", function() return rpc.rpc_sync("solo", funcs.echo, {}, { timeout = NAN }) end, "rpc_sync: timeout must be a number of seconds >= 0" },
  { "timeout -1", function() return rpc.rpc_async("solo", funcs.echo, {}, { timeout = -1 }) end, "rpc_async: timeout must be a number of seconds >= 0" },
  { "timeout 'x'", function() return rpc.rpc_sync("solo", funcs.echo, {}, { timeout = "x" }) end, "rpc_sync: timeout must be a number of seconds >= 0" },
  -- remote
  { "remote to 'nobody'", function() return rpc.remote("nobody", funcs.echo) end, "remote: no worker named 'nobody'" },
  { "remote fn 5", function() return rpc.remote("solo", 5) end, "remote: fn must be a function or a 'module:path' string, got number" },
  { "remote args 5", function() return rpc.remote("solo", funcs.echo, 5) end, "remote: args must be a table %(a list%), got number" },
  { "remote args with a coroutine", function() return rpc.remote("solo", funcs.echo, { coroutine.create(print) }) end, "remote: args%[1%]: cannot send a thread" },
  { "remote timeout NaN", function() return rpc.remote("solo", funcs.echo, {}, { timeout = NAN }) end, "remote: timeout must be a number of seconds >= 0" },
  { "get_worker_info(5)", function() return rpc.get_worker_info(5) end, "get_worker_info: no worker with id 5" },
  { "get_worker_info({})", function() return rpc.get_worker_info({}) end, "get_worker_info: 'to' must be a worker name, WorkerInfo or id, got table" },
  -- RRefs
  { "RRef:owner() on 5", function() return owned.owner(5) end, "owner: expected an RRef, got number" },
  { "RRef:owner_name() on nil", function() return owned.owner_name() end, "owner_name: expected an RRef, got nil" },
  { "RRef:is_owner() on {}", function() return owned.is_owner({}) end, "is_owner: expected an RRef, got table" },
  { "RRef:confirmed_by_owner() on 5", function() return owned.confirmed_by_owner(5) end, "confirmed_by_owner: expected an RRef, got number" },
  { "RRef:local_value() on 5", function() return owned.local_value(5) end, "local_value: expected an RRef, got number" },
  { "RRef.to_here() without self", function() return owned.to_here() end, "to_here: expected an RRef, got nil" },
  { "to_here('x')", function() return owned:to_here("x") end, "to_here: timeout must be a number of seconds >= 0, got x" },
  { "to_here(NaN)", function() return owned:to_here(NAN) end, "to_here: timeout must be a number of seconds >= 0, got %-?nan" },
  { "to_here(-1)", function() return owned:to_here(-1) end, "to_here: timeout must be a number of seconds >= 0, got %-1" },
  { "rpc_sync('x') proxy", function() return owned:rpc_sync("x") end, "rpc_sync: timeout must be a number of seconds >= 0, got x" },
  { "rpc_async(NaN) proxy", function() return owned:rpc_async(NAN) end, "rpc_async: timeout must be a number of seconds >= 0, got %-?nan" },
  { "remote({timeout=-1}) proxy", function() return owned:remote({ timeout = -1 }) end, "remote: timeout must be a number of seconds >= 0, got %-1" },
  { "proxy: no such method", function() return owned:rpc_sync():nomethod() end, "the RRef's value %(a table%) has no method 'nomethod'" },
  { "proxy: unsendable argument", function() return owned:rpc_sync():get(coroutine.create(print)) end, "args%[4%]%[1%]: cannot send a thread" },
  { "RRef:backward('x')", function() return owned:backward("x") end, "RRef:backward: expected a context or its id, got string" },
  { "RRef:backward() of a table", function() return owned:backward() end, "RRef:backward: the value is a table, not a tensor" },
  -- distributed autograd and optimizer
  { "context(5)", function() return dist_autograd.context(5) end, "dist_autograd.context: expected a function%(ctx%), got number" },
  { "nested new_context", function() return dist_autograd.context(function() return dist_autograd.new_context() end) end, "dist_autograd.new_context: this task is already in context" },
  { "backward ctx 'x'", function() return dist_autograd.backward("x", {}) end, "dist_autograd.backward: expected a context or its id, got string" },
  { "backward ctx 12345", function() return dist_autograd.backward(12345, {}) end, "dist_autograd.backward: no context 0:12345 on worker 'solo'" },
  { "backward ctx NaN", function() return dist_autograd.backward(NAN, {}) end, "dist_autograd.backward: expected a context or its id, got number" },
  { "backward roots 5", function() return dist_autograd.context(function(ctx) return dist_autograd.backward(ctx, 5) end) end, "dist_autograd.backward: roots must be a list of tensors, got number" },
  { "backward roots {5}", function() return dist_autograd.context(function(ctx) return dist_autograd.backward(ctx, { 5 }) end) end, "dist_autograd.backward: roots%[1%] is a number, not a tensor" },
  { "backward root without grad", function() return dist_autograd.context(function(ctx) return dist_autograd.backward(ctx, { T.ones(1) }) end) end, "dist_autograd.backward: roots%[1%] does not require grad" },
  { "get_gradients(NaN)", function() return dist_autograd.get_gradients(NAN) end, "dist_autograd.get_gradients: expected a context or its id, got number" },
  { "DistributedOptimizer(5)", function() return dist_optim.DistributedOptimizer(5, {}) end, "DistributedOptimizer: optim_class must be an optimizer constructor" },
  { "DistributedOptimizer no params", function() return dist_optim.DistributedOptimizer(optim.SGD, {}) end, "DistributedOptimizer: param_rrefs must be a non%-empty list of RRefs" },
  { "DistributedOptimizer {5}", function() return dist_optim.DistributedOptimizer(optim.SGD, { 5 }) end, "DistributedOptimizer: param_rrefs%[1%] is not an RRef %(got number%)" },
  { "DistributedOptimizer {tensor}", function() return dist_optim.DistributedOptimizer(optim.SGD, { T.ones(1) }) end, "param_rrefs%[1%] is not an RRef %(got a tensor; wrap it with rpc.RRef%)" },
  { "DistributedOptimizer options 5", function() return dist_optim.DistributedOptimizer(optim.SGD, { rpc.RRef(T.ones(1, { requires_grad = true })) }, 5) end, "DistributedOptimizer: opts must be a table, got number" },
  { "DistributedOptimizer lr NaN", function() return dist_optim.DistributedOptimizer(optim.SGD, { rpc.RRef(T.ones(1, { requires_grad = true })) }, { lr = NAN }) end, "DistributedOptimizer: making the optimizer on this worker: .*SGD: invalid lr %-?nan" },
  { "DistributedOptimizer:step('x')", function() return dist_optim.DistributedOptimizer(optim.SGD, { rpc.RRef(T.ones(1, { requires_grad = true })) }, { lr = 0.1 }):step("x") end, "DistributedOptimizer:step: expected a context or its id, got string" },
  { "DistributedOptimizer:step(unknown)", function() return dist_optim.DistributedOptimizer(optim.SGD, { rpc.RRef(T.ones(1, { requires_grad = true })) }, { lr = 0.1 }):step(12345) end, "DistributedOptimizer:step: no distributed autograd context 0:12345" },
  { "parameter_rrefs(5)", function() return dist_optim.parameter_rrefs(5) end, "parameter_rrefs: expected a module or a list of tensors, got number" },
  { "parameter_rrefs({5})", function() return dist_optim.parameter_rrefs({ 5 }) end, "parameter_rrefs: item 1 is a number, not a tensor" },
  -- shutdown refuses bad options before it starts: RPC keeps running
  { "shutdown(5)", function() return rpc.shutdown(5) end, "shutdown: options must be a table, got number" },
  { "shutdown timeout NaN", function() return rpc.shutdown({ timeout = NAN }) end, "shutdown: timeout must be a number of seconds >= 0, got %-?nan" },
  { "shutdown timeout 'x'", function() return rpc.shutdown({ timeout = "x" }) end, "shutdown: timeout must be a number of seconds >= 0, got x" },
}

describe("bad input: rpc in a world of one worker", function()
  setup(function()
    rpc.init_rpc("solo", { rank = 0, world_size = 1, master_addr = "127.0.0.1",
      master_port = world.free_port() })
    owned = rpc.RRef({ get = function(self, x) return x end })
  end)
  teardown(function()
    owned = nil
    collectgarbage()
    rpc.shutdown()
  end)

  counts.rpc_solo = rows_of(solo_rows, rpc_up)

  it("sends nils inside args: holes, trailing nils, table.pack's n", function()
    local r = rpc.rpc_sync("solo", funcs.echo, { 1, nil, 3 })
    assert.same({ n = 3, 1, nil, 3 }, r)
    r = rpc.rpc_sync("solo", funcs.echo, table.pack(nil, 2, nil, nil))
    assert.same({ n = 4, nil, 2 }, r)
    assert.equal(4, rpc.rpc_sync("solo", funcs.count, { n = 4 }))
    assert.equal(0, rpc.rpc_sync("solo", funcs.count, {}))
    local holes = { [1] = "a", [5] = "e" }
    assert.equal(5, rpc.rpc_sync("solo", funcs.count, holes))
    assert.is_nil(holes.n) -- the caller's table is left as it was
    assert.equal(3, rpc.remote("solo", funcs.count, { 1, nil, 3 }):to_here())
    rpc_up()
  end)
end)

describe("bad input: nils in RPC arguments between two processes", function()
  it("keeps the values after a hole, honours args.n, refuses a bad n", function()
    local w = world.run("holes", 2, { worker = "spec/fixtures/bad_input/worker.lua",
      timeout = 120 })
    world.assert_all_ok(w)
    local r = w[0].results
    assert.equal("3:1,nil,3", r.hole)
    assert.equal("3:1,nil,nil", r.pack)
    assert.equal("2:nil,2", r.leading)
    assert.equal("4:a,nil,nil,d", r.sparse)
    assert.equal("2:nil,nil", r.n_only)
    assert.equal("0:", r.empty)
    assert.equal("3:nil,nil,3", r.async)
    assert.equal("3:1,nil,3", r.remote)
    assert.equal("3:1,nil,3", r.proxy)
    assert.matches("rpc_sync: args.n must be an integer >= 0", r.bad_n, 1, true)
    assert.matches("args[3]: cannot send a thread", r.bad_value, 1, true)
  end)
end)

describe("bad input: row counts", function()
  it("has rows for every module", function()
    local parts, total = {}, 0
    for _, module in ipairs({ "tensor", "nn", "optim", "distributions", "envs",
      "futures", "rpc_before_init", "rpc_solo" }) do
      assert.is_true((counts[module] or 0) >= 20, module)
      parts[#parts + 1] = ("%s=%d"):format(module, counts[module])
      total = total + counts[module]
    end
    print(("\nbad input rows: %s (total %d)"):format(table.concat(parts, ", "),
      total))
  end)
end)
