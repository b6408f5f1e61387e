-- Values on the wire: every kind of value that travels, round-tripped through
-- core.wire_encode/core.wire_decode (the same code the RPC agent uses), the
-- errors that name the offending path, and bodies that are malformed on
-- purpose (they must fail cleanly, never crash).
local core = require "ember.core"
local T = require "ember.tensor"

-- ---- Helpers -----------------------------------------------------------------

local function error_of(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  return tostring(err)
end

local function round_trip(value, root)
  local body, payloads = core.wire_encode(value, root or "args")
  assert.is_true(core.wire_check(body))
  return core.wire_decode(body, payloads), body, payloads
end

local function encode_error(value)
  return error_of(core.wire_encode, value, "args")
end

-- Asserts that `needle` occurs in `message` as plain text.
local function has(needle, message)
  assert.is_truthy(message:find(needle, 1, true),
    ("expected %q in %q"):format(needle, message))
end

-- Decoding must either give a value or raise a string: never crash, never
-- raise something odd.
local function decodes_or_fails_cleanly(body, payloads)
  local ok, err = pcall(core.wire_decode, body, payloads or {})
  if not ok then assert.is_string(err) end
  return ok
end

-- ---- Scalars -------------------------------------------------------------------

describe("wire scalars", function()
  it("keep nil and booleans", function()
    assert.is_nil(round_trip(nil))
    assert.is_true(round_trip(true))
    assert.is_false(round_trip(false))
  end)

  it("keep integers integers, across every msgpack width", function()
    for _, n in ipairs({ 0, 1, -1, 127, 128, -32, -33, 255, 256, 65535, 65536,
      -32768, -32769, 1 << 31, -(1 << 31) - 1, 1 << 32, -(1 << 40),
      math.maxinteger, math.mininteger }) do
      local v = round_trip(n)
      assert.equal("integer", math.type(v), tostring(n))
      assert.equal(n, v)
    end
  end)

  it("keep floats floats, even those with integer values", function()
    for _, x in ipairs({ 1.0, 0.0, 0.1, -2.5, 1e308, 5e-324, 2.0 ^ 63,
      math.huge, -math.huge }) do
      local v = round_trip(x)
      assert.equal("float", math.type(v), tostring(x))
      assert.equal(x, v)
    end
    local negative_zero = round_trip(-0.0)
    assert.equal("float", math.type(negative_zero))
    assert.equal(-math.huge, 1 / negative_zero)
    local nan = round_trip(0 / 0)
    assert.is_true(nan ~= nan)
  end)

  it("keep strings byte for byte, NUL bytes included", function()
    assert.equal("", round_trip(""))
    assert.equal("a\0b\0", round_trip("a\0b\0"))
    local bytes = {}
    for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
    local all = table.concat(bytes)
    assert.equal(all, round_trip(all))
    local long = string.rep("xyz", 100000)
    assert.equal(long, round_trip(long))
  end)
end)

-- ---- Tables --------------------------------------------------------------------

describe("wire tables", function()
  it("send arrays and nested tables", function()
    local v = { 1, 2.5, "three", { 4, { 5, { six = 6 } } }, true }
    assert.same(v, round_trip(v))
    assert.equal("float", math.type(round_trip({ 2.0 })[1]))
  end)

  it("send maps with string, integer, float and boolean keys", function()
    local v = { a = 1, [10] = "ten", [-3] = "minus three", [2.5] = "x",
      [true] = "yes", [false] = { nested = true }, ["odd key"] = 0 }
    local d = round_trip(v)
    assert.same(v, d)
    assert.equal("integer", math.type(next({ [10] = 1 })))
  end)

  it("send tables with holes as maps", function()
    local d = round_trip({ 1, nil, 3 })
    assert.equal(1, d[1])
    assert.is_nil(d[2])
    assert.equal(3, d[3])
    assert.same({ [2] = "b", [3] = "c" }, round_trip({ [2] = "b", [3] = "c" }))
  end)

  it("send an empty table as an empty table", function()
    assert.same({}, round_trip({}))
    assert.same({ {}, { {} } }, round_trip({ {}, { {} } }))
  end)

  it("send a table reachable twice (without a cycle) twice", function()
    local shared = { 1, 2 }
    local d = round_trip({ shared, shared, x = shared })
    assert.same({ { 1, 2 }, { 1, 2 }, x = { 1, 2 } }, d)
  end)

  it("nest up to 64 levels", function()
    local root = {}
    local cur = root
    for _ = 2, 64 do
      cur[1] = {}
      cur = cur[1]
    end
    cur[1] = "bottom"
    local d = round_trip(root)
    for _ = 1, 64 do d = d[1] end
    assert.equal("bottom", d)
  end)

  it("nest 64 levels on a coroutine's small stack", function()
    local Box = {}
    core.wire_register_class("spec.Box", Box)
    local arrays, maps, boxes = {}, {}, {}
    local a, m, b = arrays, maps, boxes
    for _ = 2, 64 do
      a[1], m.k = {}, {}
      a, m = a[1], m.k
    end
    for _ = 1, 31 do -- each instance is two levels: [class, state]
      b.inner = setmetatable({}, Box)
      b = b.inner
    end
    for _, value in ipairs({ arrays, maps, boxes }) do
      local body, payloads = core.wire_encode(value)
      local ok, copy = coroutine.wrap(function()
        return pcall(core.wire_decode, body, payloads)
      end)()
      assert.is_true(ok, copy)
      local again = coroutine.wrap(function() return core.wire_encode(copy) end)()
      assert.equal(body, again)
    end
  end)
end)

-- ---- Tensors -------------------------------------------------------------------

describe("wire tensors", function()
  local function same_tensor(expected, actual)
    assert.is_true(T.is_tensor(actual))
    assert.equal(expected:dtype(), actual:dtype())
    assert.same(expected:size(), actual:size())
    assert.same(expected:totable(), actual:totable())
  end

  it("send every dtype", function()
    for _, dtype in ipairs({ "float32", "float64", "int64", "int32", "uint8" }) do
      local t = T.tensor({ { 1, 2, 3 }, { 4, 5, 250 } }, { dtype = dtype })
      same_tensor(t, round_trip(t))
    end
    local b = T.tensor({ true, false, true })
    same_tensor(b, round_trip(b))
    local big = T.tensor({ math.maxinteger, math.mininteger, 2 ^ 53 // 1 + 1 },
      { dtype = "int64" })
    same_tensor(big, round_trip(big))
  end)

  it("send non-contiguous views by value", function()
    local t = T.arange(12, { dtype = "float64" }):reshape(3, 4)
    for _, view in ipairs({ t:t(), t:narrow(2, 2, 2), t:select(2, 3),
      T.tensor({ 1, 2 }):expand(3, 2), t:t():narrow(1, 2, 2) }) do
      assert.is_false(view:is_contiguous())
      local d = round_trip(view)
      same_tensor(view, d)
      assert.is_true(d:is_contiguous())
    end
  end)

  it("send 0-dim and empty tensors", function()
    local scalar = T.tensor(3.5)
    local d = round_trip(scalar)
    assert.equal(0, d:dim())
    assert.equal(3.5, d:item())
    for _, shape in ipairs({ { 0 }, { 0, 3 }, { 2, 0, 4 } }) do
      local e = T.zeros(shape, { dtype = "int32" })
      local de = round_trip(e)
      assert.same(shape, de:size())
      assert.equal("int32", de:dtype())
    end
  end)

  it("carry requires_grad; the received tensor is a fresh leaf", function()
    local x = T.randn(2, 3, { requires_grad = true })
    local d = round_trip(x)
    assert.is_true(d.requires_grad)
    assert.is_true(d.is_leaf)
    local y = x * 2 -- not a leaf: arrives as a leaf that requires grad
    local dy = round_trip(y)
    assert.is_true(dy.requires_grad)
    assert.is_true(dy.is_leaf)
    assert.is_nil(dy.grad_fn)
    assert.is_false(round_trip(T.ones(2)).requires_grad)
    local loss = (d * d):sum()
    loss:backward()
    assert.is_true(T.is_tensor(d.grad))
  end)

  it("send one tensor once, however often it appears", function()
    local t = T.ones(4)
    local u = T.zeros(2)
    local d, _, payloads = round_trip({ t, { t, u }, k = t })
    assert.equal(2, #payloads)
    assert.is_true(rawequal(d[1], d[2][1]))
    assert.is_true(rawequal(d[1], d.k))
    same_tensor(u, d[2][2])
  end)

  it("sends contiguous tensors without copying", function()
    local t = T.zeros(6)
    local _, payloads = core.wire_encode({ t })
    payloads[1]:fill_(1)
    assert.same({ 1, 1, 1, 1, 1, 1 }, t:totable())
    local _, copied = core.wire_encode({ t:reshape(2, 3):t() })
    copied[1]:fill_(2)
    assert.same({ 1, 1, 1, 1, 1, 1 }, t:totable())
  end)

  it("share the received payload's storage", function()
    local t = T.zeros(3)
    local body, payloads = core.wire_encode(t)
    local d = core.wire_decode(body, payloads)
    payloads[1]:fill_(7) -- the payload here is t itself
    assert.same({ 7, 7, 7 }, d:totable())
  end)
end)

-- ---- Functions -------------------------------------------------------------------

describe("wire functions", function()
  local registry = {}
  local previous

  local function named(name, fn)
    registry[name] = fn
    registry[fn] = name
    return fn
  end

  before_each(function()
    previous = core.wire_set_hooks({
      function_ref = function(fn)
        local name = registry[fn]
        if name then return name end
        return nil, "this function is not reachable from any module"
      end,
      function_load = function(ref)
        return registry[ref] or error("no function " .. ref)
      end,
    })
  end)

  after_each(function() core.wire_set_hooks(previous) end)

  it("travel as module:path references", function()
    local f = named("mod.sub:f", function() return 1 end)
    local body = core.wire_encode({ f })
    has("mod.sub:f", body)
    local d = core.wire_decode(body)
    assert.equal(f, d[1])
  end)

  it("name the path of a function the resolver refuses", function()
    local err = encode_error({ 1, { cb = function() end } })
    has("args[2].cb: this function is not reachable from any module", err)
  end)

  it("fail on decode when the loader raises", function()
    local f = named("mod:gone", function() end)
    local body = core.wire_encode(f)
    registry["mod:gone"] = nil
    has("no function mod:gone", error_of(core.wire_decode, body))
  end)

  it("without hooks: encoding fails, decoding gives the reference", function()
    local f = named("mod:f", print)
    local body = core.wire_encode(f)
    core.wire_set_hooks(nil)
    has("args: cannot send a function (no resolver set)", encode_error(print))
    assert.equal("mod:f", core.wire_decode(body))
  end)
end)

-- ---- Classes -------------------------------------------------------------------

describe("wire classes", function()
  local Point = {}
  Point.__index = Point
  function Point.new(x, y) return setmetatable({ x = x, y = y }, Point) end
  function Point:norm2() return self.x * self.x + self.y * self.y end
  core.wire_register_class("spec.Point", Point)

  local Vec = {}
  Vec.__index = Vec
  function Vec.__pack(v) return { v.n, v.items } end
  function Vec.__unpack(state)
    return setmetatable({ n = state[1], items = state[2], unpacked = true }, Vec)
  end
  core.wire_register_class("spec.Vec", Vec)

  it("send instances by their raw fields", function()
    local p = round_trip(Point.new(3, 4))
    assert.equal(Point, getmetatable(p))
    assert.equal(25, p:norm2())
    local empty = round_trip(setmetatable({}, Point))
    assert.equal(Point, getmetatable(empty))
    assert.is_nil(next(empty))
  end)

  it("send instances through __pack and __unpack", function()
    local v = round_trip(setmetatable({ n = 2, items = { "a", "b" } }, Vec))
    assert.equal(Vec, getmetatable(v))
    assert.is_true(v.unpacked)
    assert.same({ "a", "b" }, v.items)
  end)

  it("keep arrays and maps around instances intact", function()
    local p, q = Point.new(1, 2), Point.new(5, 6)
    local value = { p, 7, { k = q, [3] = setmetatable({ n = 0, items = {} }, Vec) },
      Point.new(0, 0), "end" }
    local d = round_trip(value)
    assert.equal(5, #d)
    assert.equal(5, d[1]:norm2())
    assert.equal(7, d[2])
    assert.equal(61, d[3].k:norm2())
    assert.is_true(d[3][3].unpacked)
    assert.equal(0, d[4]:norm2())
    assert.equal("end", d[5])
  end)

  it("look classes up by name", function()
    assert.equal(Point, core.wire_class_of("spec.Point"))
    assert.is_nil(core.wire_class_of("spec.Nothing"))
  end)

  it("refuse one metatable under two names", function()
    has("already registered as 'spec.Point'",
      error_of(core.wire_register_class, "spec.Other", Point))
    core.wire_register_class("spec.Point", Point) -- again: fine
  end)

  it("replace a name registered again with another metatable", function()
    local A, B = {}, {}
    core.wire_register_class("spec.Replaced", A)
    core.wire_register_class("spec.Replaced", B)
    assert.equal(B, core.wire_class_of("spec.Replaced"))
    has("not registered with rpc.register_class",
      encode_error(setmetatable({}, A)))
    assert.equal(B, getmetatable(round_trip(setmetatable({}, B))))
  end)

  it("fail on decode for an unknown class, naming it", function()
    local Temp = {}
    core.wire_register_class("spec.Zq", Temp)
    local body = core.wire_encode({ setmetatable({ a = 1 }, Temp) })
    local renamed = body:gsub("spec%.Zq", "spec.Qq")
    has("unknown class 'spec.Qq'", error_of(core.wire_decode, renamed))
  end)

  it("catch __pack returning the instance itself as a cycle", function()
    local Selfish = { __pack = function(self) return self end }
    core.wire_register_class("spec.Selfish", Selfish)
    has("args[1]: a cycle", encode_error({ setmetatable({}, Selfish) }))
  end)

  it("refuse a state that is not a table without __unpack", function()
    local Plain = {}
    core.wire_register_class("spec.Plain", Plain)
    local Packs = { __pack = function() return 42 end }
    core.wire_register_class("spec.Packs", Packs)
    local body = core.wire_encode(setmetatable({}, Packs))
    local renamed = body:gsub("spec%.Packs", "spec.Plain")
    has("is a number, not a table", error_of(core.wire_decode, renamed))
  end)
end)

-- ---- Errors that name a path ------------------------------------------------------

describe("wire encoding errors", function()
  it("name userdata, coroutines and their paths", function()
    has("args[2].foo: cannot send a userdata",
      encode_error({ 1, { foo = io.stdout } }))
    has("args.co: cannot send a thread",
      encode_error({ co = coroutine.create(print) }))
    has('args["odd key"][1]: cannot send a userdata',
      encode_error({ ["odd key"] = { io.stderr } }))
    has("args[true]: cannot send a userdata", encode_error({ [true] = io.stdout }))
    has("value: cannot send a userdata", error_of(core.wire_encode, io.stdout))
  end)

  it("name cycles", function()
    local t = { a = { b = {} } }
    t.a.b.c = t
    has("args.a.b.c: a cycle (the table is already being sent)", encode_error(t))
    local self = {}
    self[1] = self
    has("args[1]: a cycle", encode_error(self))
  end)

  it("refuse nesting deeper than 64", function()
    local root = {}
    local cur = root
    for _ = 1, 64 do
      cur[1] = {}
      cur = cur[1]
    end
    has("nesting deeper than 64 levels", encode_error(root))
  end)

  it("refuse tables with unregistered metatables", function()
    has("args[1]: a table with a metatable that is not registered with " ..
      "rpc.register_class", encode_error({ setmetatable({}, {}) }))
  end)

  it("refuse keys that cannot travel", function()
    has("args.t: a table key of type table cannot be sent",
      encode_error({ t = { [{}] = 1 } }))
  end)

  it("leave nothing behind after an error half-way", function()
    local big = T.ones(100)
    for _ = 1, 50 do
      pcall(core.wire_encode, { big:t(), big, io.stdout })
    end
    collectgarbage()
    collectgarbage()
  end)
end)

-- ---- Malformed bodies --------------------------------------------------------------

describe("wire decoding of malformed bodies", function()
  it("checks before decoding", function()
    local ok, err = core.wire_check("\xdd\xff\xff\xff\xff")
    assert.is_nil(ok)
    has("array of 4294967295 elements at depth 1 but only 0 bytes left", err)
    has("array of 4294967295 elements", error_of(core.wire_decode, "\xdd\xff\xff\xff\xff"))
    has("trailing bytes", error_of(core.wire_decode, "\x01\x02"))
    has("array of 2 elements at depth 1 but only 1 bytes left",
      error_of(core.wire_decode, "\x92\x01"))
    has("truncated float at byte 1", error_of(core.wire_decode, "\x91\xcb\x00"))
    has("str of 5 bytes at byte 0 but only 2 bytes left",
      error_of(core.wire_decode, "\xa5ab"))
    ok, err = core.wire_check(string.rep("\x91", 65) .. "\xc0")
    assert.is_nil(ok)
    has("over the limit of 64", err)
    assert.is_true(core.wire_check("\x91\x91\xc0", { max_depth = 2 }))
    assert.is_nil(core.wire_check("\x91\x91\xc0", { max_depth = 1 }))
    assert.is_nil(core.wire_check("\xa3abc", { max_string = 2 }))
  end)

  it("names bad tensor references", function()
    local t = T.ones(2, 3)
    local body = core.wire_encode({ t })
    has("tensor payload index 0 out of range (the frame has 0 tensors)",
      error_of(core.wire_decode, body, {}))
    has("needs 24 bytes but its payload has 12",
      error_of(core.wire_decode, body, { T.ones(3) }))
    has("too short", error_of(core.wire_decode, "\xd4\x01\x00"))
    -- ext 8 bytes + one dim, with a wrong length
    has("tensor reference of 9 bytes",
      error_of(core.wire_decode, "\xc7\x09\x01" .. string.rep("\0", 9)))
    -- an int64 tensor that claims to require grad
    local ext = "\x03\x00\x01\x00\x00\x00\x00\x00"
    has("cannot require grad",
      error_of(core.wire_decode, "\xd7\x01" .. ext, { T.zeros(1, { dtype = "int64" }) }))
  end)

  it("names unknown ext types and stray class markers", function()
    has("unknown ext type 9", error_of(core.wire_decode, "\xd4\x09\x00"))
    has("unknown ext type -1", error_of(core.wire_decode, "\xd6\xff\0\0\0\0"))
    has("outside an instance", error_of(core.wire_decode, "\xc7\x01\x03A"))
    has("expected 2", error_of(core.wire_decode, "\x93\xc7\x01\x03A\x01\x02"))
    has("a map key at byte 1 is nil", error_of(core.wire_decode, "\x81\xc0\x01"))
  end)

  it("decodes msgpack it never writes itself", function()
    assert.equal(1.5, core.wire_decode("\xca\x3f\xc0\x00\x00")) -- float32
    assert.equal("abc", core.wire_decode("\xc4\x03abc"))        -- bin
    local big = core.wire_decode("\xcf\xff\xff\xff\xff\xff\xff\xff\xff")
    assert.equal("float", math.type(big))                        -- uint64
  end)

  it("never crashes on truncated real bodies", function()
    local P = {}
    core.wire_register_class("spec.Truncated", P)
    local value = { 1, -2.5, "str\0", { a = { b = true } }, setmetatable({ z = 1 }, P),
      T.ones(2, 2), T.ones(3):expand(2, 3), [7.5] = false }
    local body, payloads = core.wire_encode(value)
    assert.is_true(decodes_or_fails_cleanly(body, payloads))
    for len = 0, #body - 1 do
      assert.is_false(decodes_or_fails_cleanly(body:sub(1, len), payloads))
    end
  end)

  it("never crashes on random bytes or flipped bytes", function()
    math.randomseed(20240611)
    local body, payloads = core.wire_encode({ 1, { x = "y", [2] = T.ones(3) },
      T.zeros(2, { dtype = "int64" }), 3.25 })
    local decoded = 0
    for _ = 1, 3000 do
      local bytes = {}
      for i = 1, math.random(0, 40) do bytes[i] = string.char(math.random(0, 255)) end
      if decodes_or_fails_cleanly(table.concat(bytes), payloads) then
        decoded = decoded + 1
      end
      local flipped = {}
      for i = 1, #body do flipped[i] = body:sub(i, i) end
      for _ = 1, math.random(1, 3) do
        flipped[math.random(#body)] = string.char(math.random(0, 255))
      end
      decodes_or_fails_cleanly(table.concat(flipped), payloads)
    end
    assert.is_true(decoded > 0)
  end)
end)

-- ---- Frame headers -----------------------------------------------------------------

describe("wire frame headers", function()
  it("round-trip", function()
    local h = core.wire_header(10, 123456789012, 300, 2, 1)
    assert.equal(24, #h)
    assert.equal("EMBR", h:sub(1, 4))
    assert.same({ version = 1, kind = 10, flags = 1, request_id = 123456789012,
      body_len = 300, tensor_count = 2 }, core.wire_parse_header(h))
  end)

  it("refuse bad magic, version, kind, sizes and lengths", function()
    local h = core.wire_header(10, 1, 300, 2)
    local function refused(bytes, needle, limits)
      local ok, err = core.wire_parse_header(bytes, limits)
      assert.is_nil(ok)
      has(needle, err)
    end
    refused("X" .. h:sub(2), "bad frame magic")
    refused(core.wire_header(10, 1, 300, 2, 0, 2), "unsupported wire version 2")
    refused(core.wire_header(99, 1, 300, 2), "unknown frame kind 99")
    refused(core.wire_header(10, 1, 3000000000, 2),
      "frame body of 3000000000 bytes exceeds the limit of 67108864")
    refused(core.wire_header(10, 1, 300, 5000), "5000 tensors")
    refused(core.wire_header(10, 1, 300, 2), "exceeds the limit of 100",
      { max_body = 100 })
    refused(h:sub(1, 23), "24 bytes")
  end)
end)
