-- rpc.batched: gathering calls into one run of a function. Called locally the
-- batched function returns a future, so most of it is checked in one
-- process; the last case calls it over RPC from three workers.
local ember = require "ember"
local rpc = require "ember.rpc"
local futures = require "ember.futures"
local world = require "spec.support.world"

-- A batch function that records each batch and answers a*b per call.
local function recorder()
  local batches = {}
  local function fn(calls)
    batches[#batches + 1] = calls
    local results = {}
    for i, call in ipairs(calls) do results[i] = call[1] * call[2] end
    return results
  end
  return fn, batches
end

-- The values of a list of futures, as a plain list.
local function values(list)
  local all = futures.wait_all(list)
  all.n = nil
  return all
end

local function error_text(f)
  local ok, err = pcall(f.wait, f)
  assert.is_false(ok)
  return tostring(err)
end

describe("rpc.batched", function()
  it("is an async_execution function", function()
    local batched = rpc.batched(function(calls) return calls end, { max_size = 2 })
    assert.is_true(rpc.functions.is_async_execution(batched))
  end)

  it("runs fn once when max_size calls have come, each caller its own result", function()
    local fn, batches = recorder()
    local batched = rpc.batched(fn, { max_size = 3 })
    local a, b = batched(2, 10), batched(3, 10)
    ember.run(ember.after(0.02, function() end))
    assert.is_false(a:done())
    assert.equal(0, #batches)
    local c = batched(4, 10)
    assert.same({ 20, 30, 40 }, values({ a, b, c }))
    assert.equal(1, #batches)
    assert.equal(3, #batches[1])
    assert.equal(2, batches[1][1].n)
    -- The next calls start a new batch.
    local d, e, f = batched(1, 1), batched(1, 2), batched(1, 3)
    assert.same({ 1, 2, 3 }, values({ d, e, f }))
    assert.equal(2, #batches)
  end)

  it("runs what it has after max_delay seconds", function()
    local fn, batches = recorder()
    local batched = rpc.batched(fn, { max_size = 100, max_delay = 0.05 })
    local start = ember.clock()
    local a, b = batched(1, 5), batched(2, 5)
    assert.same({ 5, 10 }, values({ a, b }))
    local waited = ember.clock() - start
    assert.is_true(waited >= 0.04, "waited " .. waited)
    assert.is_true(waited < 1, "waited " .. waited)
    assert.equal(1, #batches)
    assert.equal(2, #batches[1])
  end)

  it("with max_delay alone gathers whatever arrives in that time", function()
    local fn, batches = recorder()
    local batched = rpc.batched(fn, { max_delay = 0.02 })
    local list = {}
    for i = 1, 5 do list[i] = batched(i, 1) end
    assert.same({ 1, 2, 3, 4, 5 }, values(list))
    assert.equal(1, #batches)
  end)

  it("keeps nil arguments and nil results in place", function()
    local batched = rpc.batched(function(calls)
      local results = { n = #calls }
      for i, call in ipairs(calls) do
        results[i] = call[2] == nil and "second was nil" or nil
      end
      return results
    end, { max_size = 2 })
    local a, b = batched(1, nil, 3), batched(1, 2)
    assert.equal("second was nil", a:wait())
    assert.is_nil(b:wait())
  end)

  it("accepts a future of the results from fn", function()
    local batched = rpc.batched(function(calls)
      return ember.after(0.01, function()
        local results = {}
        for i, call in ipairs(calls) do results[i] = call[1] + 1 end
        return results
      end)
    end, { max_size = 2 })
    local a, b = batched(1), batched(2)
    assert.same({ 2, 3 }, values({ a, b }))
  end)

  it("fails every call of the batch with fn's error and traceback", function()
    local batched = rpc.batched(function() error("no batches today") end,
      { max_size = 2 })
    local a, b = batched(1), batched(2)
    local text = error_text(a)
    assert.matches("no batches today", text, 1, true)
    assert.matches("stack traceback", text, 1, true)
    assert.matches("no batches today", error_text(b), 1, true)
    -- The batcher still works afterwards.
    local ok = rpc.batched(function(calls) return { 1, 2 } end, { max_size = 2 })
    assert.same({ 1, 2 }, values({ ok(), ok() }))
  end)

  it("still answers the others when a caller's future was completed meanwhile", function()
    local batched = rpc.batched(function(calls)
      return { "a", "b", "c" }
    end, { max_size = 3 })
    local a, b = batched(), batched()
    a:set_result("mine")
    local c = batched()
    assert.same({ "mine", "b", "c" }, values({ a, b, c }))
  end)

  it("names a wrong number of results, or no list", function()
    local short = rpc.batched(function() return { 1 } end, { max_size = 2 })
    local a, b = short(), short()
    assert.matches("returned 1 results for 2 calls", error_text(a), 1, true)
    assert.matches("returned 1 results for 2 calls", error_text(b), 1, true)
    local odd = rpc.batched(function() return { n = 1.5 } end, { max_size = 1 })
    assert.matches("returned 1.5 results for 1 calls", error_text(odd()), 1, true)
    local scalar = rpc.batched(function() return 7 end, { max_size = 1 })
    assert.matches("must return a list of results, one per call; it " ..
      "returned a number", error_text(scalar()), 1, true)
  end)

  it("checks its arguments", function()
    local fn = function() end
    local cases = {
      { { 5, { max_size = 1 } }, "rpc.batched: expected a function, got number" },
      { { fn }, "options must be a table" },
      { { fn, {} }, "give max_size" },
      { { fn, { max_size = 0 } }, "max_size must be an integer >= 1, got 0" },
      { { fn, { max_size = 1.5 } }, "max_size must be an integer >= 1" },
      { { fn, { max_delay = -1 } }, "max_delay must be a number of seconds from 0 to 1e+06, got -1" },
      { { fn, { max_delay = 0 / 0 } }, "max_delay must be a number of seconds" },
      { { fn, { max_delay = math.huge } }, "max_delay must be a number of seconds" },
      { { fn, { max_delay = 1e10 } }, "max_delay must be a number of seconds" },
      { { fn, { max_delay = "1" } }, "max_delay must be a number of seconds" },
    }
    for _, case in ipairs(cases) do
      local ok, err = pcall(rpc.batched, table.unpack(case[1], 1, 2))
      assert.is_false(ok)
      assert.matches(case[2], err, 1, true)
    end
  end)

  it("gathers calls that come over RPC from several workers", function()
    local w = world.run("batched", 4, { worker = "spec/fixtures/rpc/worker.lua" })
    world.assert_all_ok(w)
    local why = world.describe(w)
    for rank = 1, 3 do
      assert.equal("true", w[rank].results.own, why)
      assert.equal("3", w[rank].results.batch_size, why)
    end
    assert.equal("3", w[0].results.sizes, why)
    for rank = 1, 2 do
      assert.matches("batch of 2 refused", w[rank].results.failed, 1, true)
      assert.equal("true", w[rank].results.traceback, why)
    end
  end)
end)
