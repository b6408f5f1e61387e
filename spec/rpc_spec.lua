-- Multi-process specs of ember.rpc: each case starts a world of `ember run`
-- workers (spec/fixtures/rpc/worker.lua CASE) on a free port, bounded in
-- time, and checks what each worker printed.
local world = require "spec.support.world"

local function run_world(case, n, opts)
  opts = opts or {}
  opts.worker = "spec/fixtures/rpc/worker.lua"
  return world.run(case, n, opts)
end
local describe_world, assert_all_ok = world.describe, world.assert_all_ok

describe("rpc between processes", function()
  it("calls functions by value, name and id, keeping types", function()
    local w = run_world("basics", 2)
    assert_all_ok(w)
    local r = w[0].results
    assert.equal("5", r.add)
    assert.equal("worker1", r.by_id)
    assert.equal("worker1", r.by_info)
    assert.equal("2", r.by_string)
    assert.equal("worker0", r.self)
    assert.equal("integer,float,float,integer,string,boolean", r.types)
    assert.equal("1,2.5,x,false,float", r.echo)
    assert.equal("30", r.async)
    assert.equal("WorkerInfo(id=0, name=worker0)", r.info)
    assert.matches("not reachable", r.closure)
    assert.matches("no worker named 'nobody'", r.no_worker)
    assert.matches("args must be a table", r.bad_args)
    assert.matches("args%[1%]%.co", r.bad_value)
    assert.equal("true", r.stats_sent)
    assert.equal("true", r.stats_peer)
    assert.equal("true", r.stats_bytes)
  end)

  it("returns remote errors with the remote traceback, and times out", function()
    local w = run_world("errors", 3)
    assert_all_ok(w)
    local r = w[0].results
    assert.equal("true", r.remote_is_error)
    assert.equal("worker1", r.remote_worker)
    assert.matches("boom", r.remote_message)
    assert.equal("true", r.remote_traceback)
    assert.matches("worker1", r.remote_tostring)
    assert.matches("boom", r.remote_tostring)
    assert.matches("traceback", r.remote_tostring)
    assert.matches("unknown function 'spec.fixtures.rpc.funcs:nope'", r.unknown_fn)
    assert.equal("true", r.unknown_module)
    assert.matches("may not be called remotely", r.forbidden_os)
    assert.matches("may not be called remotely", r.forbidden_main_io)
    assert.matches("may not be called remotely", r.forbidden_dofile)
    assert.equal("worker2", r.deep_worker)
    assert.equal("ETIMEDOUT", r.timeout_code)
    assert.matches("worker1", r.timeout_message)
    assert.matches("0.2 s", r.timeout_message)
    assert.equal("true", r.late_dropped)
    assert.equal("3", r.after_timeout)
    assert.matches("cannot be sent back", r.unsendable_result)
    assert.equal("4", r.serving_after)
  end)

  it("runs the RFC's async-execution examples and nests three deep", function()
    local w = run_world("async_execution", 3)
    assert_all_ok(w)
    local r = w[0].results
    assert.equal("6", r.nested)
    assert.equal("6", r.two_calls)
    assert.equal("3,7", r.fan_out)
    assert.equal("11.0/11.0,12.0/12.0,13.0/13.0,14.0/14.0", r.batch)
    assert.equal("worker1>worker2>worker0", r.deep)
  end)

  it("serves 10 observers blocked at once on one async-execution function", function()
    local w = run_world("observers", 11)
    assert_all_ok(w)
    for rank = 1, 10 do
      assert.equal("10", w[rank].results["gate" .. rank])
    end
  end)

  it("moves a 256 MiB tensor intact", function()
    local w = run_world("big_tensor", 2)
    assert_all_ok(w)
    local r = w[0].results
    assert.equal("int32", r.dtype)
    assert.equal(tostring(64 * 1024 * 1024), r.numel)
    assert.equal("true", r.sum_ok)
    assert.equal(tostring(64 * 1024 * 1024 - 1), r.last)
    assert.equal("4,5,6", r.view_back)
  end)

  it("fails every pending call to a killed peer within a second", function()
    local w = run_world("peer_killed", 3)
    assert.equal(137, w[1].status, describe_world(w)) -- killed: 128 + 9
    for _, rank in ipairs { 0, 2 } do
      assert.equal(0, w[rank].status, describe_world(w))
    end
    local r = w[0].results
    assert.is_true(tonumber(r.elapsed) < 1.2, describe_world(w))
    assert.equal("EPEERLOST", r.code)
    assert.matches("worker1", r.message)
    assert.equal("true", r.second_failed)
    assert.equal("worker1", r.lost)
    assert.equal("EPEERLOST", r.after_code)
    assert.equal("3", r.still_serving)
  end)

  it("shuts down gracefully with calls in flight", function()
    local w = run_world("graceful", 3)
    assert_all_ok(w)
    assert.equal("finished", w[0].results.in_flight)
  end)

  it("fails pending calls at once on a non-graceful shutdown", function()
    local w = run_world("not_graceful", 2)
    assert_all_ok(w)
    assert.equal("ESHUTDOWN", w[0].results.code)
    assert.equal("true", w[0].results.quick)
  end)

  it("rejects a peer with the wrong secret", function()
    local w = run_world("secret", 3)
    assert_all_ok(w)
    local r = w[0].results
    assert.equal("3", r.good)
    assert.equal("EPEERLOST", r.bad_code)
    assert.matches("secret", r.bad_message)
    assert.matches("secret", w[0].output)
  end)

  it("drops malformed and oversized frames and keeps serving", function()
    local w = run_world("malformed", 3)
    assert_all_ok(w)
    assert.equal("42", w[0].results.still_answers)
    for _, name in ipairs { "garbage", "oversized", "early_request", "many_tensors" } do
      assert.equal("true", w[2].results["sent_" .. name])
    end
    assert.matches("bad frame", w[1].output)
  end)

  it("initialises and shuts down a world of 24 workers", function()
    local w = run_world("world", 24, { timeout = 120 })
    assert_all_ok(w)
    for rank = 0, 23 do assert.equal("true", w[rank].results.ring) end
  end)

  it("names the ranks that never joined", function()
    local w = run_world("missing", 3, {
      env = function() return "WORLD_SIZE=4" end,
    })
    for rank = 0, 2 do
      assert.equal(1, w[rank].status)
      assert.matches("rank 3 %(of 4%)", w[rank].output)
    end
  end)
end)

describe("init_rpc's busy_poll_us", function()
  local rpc = require "ember.rpc"
  local EMBER = os.getenv("EMBER_BIN") or "ember"

  it("refuses values that are not whole microseconds from 0 to 1000000", function()
    for _, bad in ipairs { -1, 1.5, 1000001, "x" } do
      local ok, err = pcall(rpc.init_rpc, "w0",
        { rank = 0, world_size = 1, busy_poll_us = bad })
      assert.is_false(ok)
      assert.matches("init_rpc: busy_poll_us must be a whole number of " ..
        "microseconds from 0 to 1000000, got " .. tostring(bad), err, 1, true)
    end
    assert.is_false(rpc.is_initialized())
  end)

  it("reads EMBER_BUSY_POLL_US, and names it when it is wrong", function()
    local script = "local rpc = require('ember.rpc'); " ..
      "rpc.init_rpc('w0', {rank = 0, world_size = 1, master_port = " ..
      world.free_port() .. "}); print('polling ok'); rpc.shutdown()"
    local function run(value)
      local pipe = io.popen(("echo %q | EMBER_BUSY_POLL_US=%s timeout 20 %s run - 2>&1"):format(
        script, value, EMBER))
      local out = pipe:read("a")
      local _, _, status = pipe:close()
      return out, status
    end
    local out, status = run("abc")
    assert.equal(1, status, out)
    assert.matches("EMBER_BUSY_POLL_US must be a whole number of microseconds " ..
      "from 0 to 1000000, got abc", out, 1, true)
    out, status = run("0")
    assert.equal(0, status, out)
    assert.matches("polling ok", out, 1, true)
  end)
end)
