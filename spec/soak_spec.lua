-- scripts/bench/soak.lua in --quick mode, run through `ember launch` as its
-- users run it. Only what it must do is asserted (every call answered right,
-- no RRef left, every held request answered, well-formed JSON lines), never
-- how fast or how big: the machine may be loaded.
local example = require "spec.support.example"
local EMBER, sh = example.EMBER, example.sh
local SCRIPT = "scripts/bench/soak.lua"

local launch = example.launcher(SCRIPT)

-- --- A strict reader of the flat JSON objects the benchmarks print ---------

local ESCAPES = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b",
  f = "\f", n = "\n", r = "\r", t = "\t" }

-- The string at `pos` (its opening quote) and the position after it.
local function json_string(text, pos)
  local out, i = {}, pos + 1
  while true do
    local c = text:sub(i, i)
    if c == "" then error("unterminated string", 0) end
    if c == '"' then return table.concat(out), i + 1 end
    if c == "\\" then
      local e = text:sub(i + 1, i + 1)
      local hex = e == "u" and text:match("^%x%x%x%x", i + 2)
      if hex then
        out[#out + 1] = utf8.char(tonumber(hex, 16))
        i = i + 6
      elseif ESCAPES[e] then
        out[#out + 1] = ESCAPES[e]
        i = i + 2
      else
        error("bad escape at " .. i, 0)
      end
    elseif c:byte() < 32 then
      error("control character in a string at " .. i, 0)
    else
      out[#out + 1] = c
      i = i + 1
    end
  end
end

-- A JSON number at `pos` (no "inf", "nan", leading zeros or bare dots).
local function json_number(text, pos)
  local i = pos
  local sign = text:match("^%-", i)
  if sign then i = i + 1 end
  local whole = text:match("^0", i) or text:match("^[1-9]%d*", i)
  if whole == nil then error("bad value at " .. pos, 0) end
  i = i + #whole
  local fraction = text:match("^%.%d+", i)
  if fraction then i = i + #fraction end
  local exponent = text:match("^[eE][-+]?%d+", i)
  if exponent then i = i + #exponent end
  return tonumber(text:sub(pos, i - 1)), i
end

local function json_value(text, pos)
  local c = text:sub(pos, pos)
  if c == '"' then return json_string(text, pos) end
  for word, value in pairs { ["true"] = true, ["false"] = false } do
    if text:sub(pos, pos + #word - 1) == word then
      return value, pos + #word
    end
  end
  return json_number(text, pos)
end

-- The object on a line {"key":value,...} of strings, numbers and booleans.
local function parse_object(text)
  if text:sub(1, 1) ~= "{" then error("not an object", 0) end
  local object, pos = {}, 2
  if text:sub(pos, pos) == "}" then pos = pos + 1 else
    while true do
      if text:sub(pos, pos) ~= '"' then
        error("expected a key at " .. pos, 0)
      end
      local key
      key, pos = json_string(text, pos)
      if object[key] ~= nil then error("duplicate key " .. key, 0) end
      if text:sub(pos, pos) ~= ":" then error("expected ':' at " .. pos, 0) end
      object[key], pos = json_value(text, pos + 1)
      local c = text:sub(pos, pos)
      pos = pos + 1
      if c == "}" then break end
      if c ~= "," then error("expected ',' or '}' at " .. (pos - 1), 0) end
    end
  end
  if pos <= #text then error("text after the object", 0) end
  return object
end

-- Rank 0's JSON lines, by bench name (soak.worker: a list in order).
local function results_of(out)
  local by_bench, lines = { ["soak.worker"] = {} }, 0
  for line in out:gmatch("%[rank 0%] ({[^\n]*)\n") do
    lines = lines + 1
    local ok, object = pcall(parse_object, line)
    assert(ok, ("malformed JSON line (%s): %s"):format(tostring(object), line))
    assert.is_string(object.bench, line)
    if object.bench == "soak.worker" then
      table.insert(by_bench["soak.worker"], object)
    else
      assert.is_nil(by_bench[object.bench], "printed twice: " .. line)
      by_bench[object.bench] = object
    end
  end
  return by_bench, lines
end

describe("the JSON reader of this spec", function()
  it("reads flat objects and refuses what is not JSON", function()
    local o = parse_object('{"a":1,"b":-2.5e+06,"c":"x\\"\\u0001","d":true}')
    assert.same({ a = 1, b = -2.5e6, c = 'x"\1', d = true }, o)
    for _, bad in ipairs { '{"a":inf}', '{"a":nan}', '{"a":01}', '{"a":.5}',
        '{"a":"b\nc"}', '{"a":1,"a":2}', '{"a":1}x', '{"a":1,}', '{a:1}' } do
      assert.is_false(pcall(parse_object, bad), bad)
    end
  end)
end)

describe("scripts/bench/soak.lua", function()
  it("answers every call, leaks no RRef, and answers 1,000 held async " ..
    "requests (--quick, 4 workers)", function()
    local out, status = launch(4, "--quick", 120)
    assert.equal(0, status, out)
    local results, lines = results_of(out)
    assert.equal(6, lines, out)

    local calls = results["soak.calls"]
    assert.is_table(calls, out)
    assert.equal(4, calls.workers)
    assert.equal(20000, calls.calls)
    assert.equal(20000, calls.answered_ok, out)
    assert.equal(0, calls.failed, out)
    assert.equal(0, calls.wrong, out)
    assert.equal(20000, calls.small_calls + calls.tensor_calls +
      calls.rref_calls)
    -- The mix has all three kinds (about 1% tensors, 5% RRefs).
    assert.is_true(calls.tensor_calls > 0 and calls.rref_calls > 0, out)
    assert.is_true(calls.rrefs_ok, out)
    assert.is_true(calls.idle_ok, out)
    assert.is_boolean(calls.rss_ok)
    assert.is_true(calls.p50_us <= calls.p99_us and calls.p99_us <=
      calls.max_us, out)

    local workers = results["soak.worker"]
    assert.equal(4, #workers, out)
    for rank, w in ipairs(workers) do
      assert.equal(rank - 1, w.rank)
      assert.equal(5000, w.calls)
      assert.equal(0, w.owners_left, out)
      assert.equal(0, w.users_left, out)
      assert.equal(0, w.rref_messages_pending, out)
      assert.equal(0, w.in_flight, out)
      assert.is_true(w.rss_start_bytes > 0 and w.rss_end_bytes > 0)
    end

    local async = results["soak.async"]
    assert.is_table(async, out)
    assert.equal(1000, async.pending)
    assert.equal(3, async.senders)
    assert.equal(1000, async.accepted, out)
    -- All of them were pending on rank 0 at once.
    assert.is_true(async.serving_at_peak >= 1000, out)
    assert.equal(1000, async.answered_ok, out)
    assert.equal(0, async.wrong, out)
    assert.equal(0, async.failed, out)
    assert.is_true(async.all_ok, out)

    assert.is_nil(out:match("leak"), out)
    assert.matches("%[rank 0%] soak%[rank 0%]: done in", out)
  end)

  it("explains its options with --help", function()
    local out, status = sh(("%s run %s --help"):format(EMBER, SCRIPT), 30)
    assert.equal(0, status, out)
    assert.matches("usage: ember launch %-n 8 scripts/bench/soak.lua", out)
    for _, option in ipairs { "--calls", "--tensor-share", "--rref-share",
        "--window", "--pending", "--quick" } do
      assert.matches(option, out, 1, true)
    end
  end)

  it("refuses a world of one worker, and a mix of more than all calls",
    function()
      local out, status = launch(1, "--quick", 30)
      assert.equal(2, status, out)
      assert.matches("needs 2 workers or more", out)
      out, status = launch(2, "--tensor-share 0.6 --rref-share 0.6", 30)
      assert.equal(2, status, out)
      assert.matches("add up to more than 1", out)
    end)
end)
