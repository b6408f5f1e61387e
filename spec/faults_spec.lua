-- Process faults between workers: a peer killed with SIGKILL in the middle of
-- a call, of a tensor transfer and of a graceful shutdown; rank 0 (which
-- serves the store) dying during and after the rendezvous; a peer stopped
-- with SIGSTOP for 3 s. Each case starts a world of `ember run` workers
-- (spec/fixtures/faults/kill.lua CASE). Victims print when they die and
-- survivors when their futures failed, on CLOCK_MONOTONIC (ember.clock),
-- which all processes of the host share; the "within 1 s" bounds are checked
-- on those, and the measured values are printed as "RESULT faults.*" lines.
-- Everything else is bounded generously (a loaded 2-core machine).
local world = require "spec.support.world"

local describe_world = world.describe

-- Whether rank 0 lost the race for the free port world.run picked (another
-- process on the host took it first): then the world is started again.
local function port_taken(w)
  return w[0].output:find("address already in use", 1, true) ~= nil
end

local function run_world(case, n, opts)
  opts = opts or {}
  opts.worker = "spec/fixtures/faults/kill.lua"
  opts.timeout = opts.timeout or 60
  local w
  for _ = 1, 3 do
    w = world.run(case, n, opts)
    if not port_taken(w) then break end
  end
  return w
end

local KILLED = 128 + 9 -- the exit status `timeout` reports for a SIGKILL
local LOST_WITHIN = 1  -- s from a peer's death to its futures failing
local SHUTDOWN_WITHIN = 10 -- s from a peer's death to survivors' shutdown end

local function measured(key, value)
  io.stderr:write(("RESULT faults.%s %.3f\n"):format(key, value))
  io.stderr:flush()
end

-- Seconds from the victim's death to a survivor's `key` moment.
local function since_kill(w, victim, survivor, key)
  local killed = tonumber(w[victim].results.killed_at)
  local at = tonumber(w[survivor].results[key])
  assert(killed and at, describe_world(w))
  return at - killed
end

-- Every future of the survivor to the victim (v_failed_at1..n) failed with
-- EPEERLOST naming the victim, within LOST_WITHIN of its death.
local function assert_lost_futures(w, victim, survivor, count, metric)
  local r = w[survivor].results
  local victim_name = "worker" .. victim
  local slowest = 0
  for i = 1, count do
    assert.equal("EPEERLOST", r["v_code" .. i], describe_world(w))
    assert.matches("'" .. victim_name .. "'", r["v_message" .. i],
      describe_world(w))
    local latency = since_kill(w, victim, survivor, "v_failed_at" .. i)
    assert.is_true(latency >= 0 and latency < LOST_WITHIN, describe_world(w))
    slowest = math.max(slowest, latency)
  end
  measured(metric, slowest)
end

local function assert_exits(w, ranks, status)
  for _, rank in ipairs(ranks) do
    assert.equal(status, w[rank].status, describe_world(w))
    if status == 0 then
      assert.equal(tostring(rank), w[rank].results.done, describe_world(w))
    end
  end
end

local function assert_clean_shutdown(w, ranks)
  for _, rank in ipairs(ranks) do
    assert.equal("true", w[rank].results.shutdown_ok, describe_world(w))
  end
  assert_exits(w, ranks, 0)
end

describe("process faults", function()
  it("fails exactly the calls to a peer SIGKILLed mid-call", function()
    local w = run_world("mid_call", 3)
    assert.equal(KILLED, w[2].status, describe_world(w))
    assert_lost_futures(w, 2, 0, 3, "mid_call.peer_lost_latency_s")
    local r = w[0].results
    for i = 1, 3 do assert.equal("b" .. i, r["b" .. i], describe_world(w)) end
    assert.equal("0,3", r.failed_counts, describe_world(w))
    assert.equal("EPEERLOST", r.after_code)
    assert.equal("3", r.b_after)
    assert.equal("worker2", r.lost)
    -- The default graceful shutdown goes on without the lost peer.
    assert_clean_shutdown(w, { 0, 1 })
    assert.matches("went on without 'worker2'", w[1].output)
    measured("mid_call.shutdown_after_kill_s", since_kill(w, 2, 0,
      "shutdown_done_at"))
  end)

  it("fails the transfer to a peer SIGKILLed mid-tensor, not the other", function()
    local w = run_world("mid_tensor", 3)
    assert.equal(KILLED, w[2].status, describe_world(w))
    local received = tonumber(w[2].results.received_at_kill)
    local sent = tonumber(w[0].results.big_bytes)
    -- It died with the tensor part-way in.
    assert.is_true(received > 0 and received < sent, describe_world(w))
    assert_lost_futures(w, 2, 0, 1, "mid_tensor.peer_lost_latency_s")
    local r = w[0].results
    assert.equal(tostring(16 * 1024 * 1024), r.b_numel, describe_world(w))
    assert.equal("true", r.b_intact, describe_world(w))
    assert.equal("0,1", r.failed_counts, describe_world(w))
    assert.equal("3", r.b_after)
    assert.equal("worker2", r.lost)
    assert_clean_shutdown(w, { 0, 1 })
    measured("mid_tensor.received_before_kill_mib", received / 2 ^ 20)
  end)

  for _, when in ipairs { "before", "after" } do
    it("ends the survivors' graceful shutdown when a peer dies in it (" ..
        when .. " the first barrier)", function()
      local w = run_world("mid_shutdown:" .. when, 3)
      assert.equal(KILLED, w[2].status, describe_world(w))
      assert_clean_shutdown(w, { 0, 1 })
      for _, rank in ipairs { 0, 1 } do
        assert.matches("went on without 'worker2' %(rank 2%)", w[rank].output,
          describe_world(w))
        local after = since_kill(w, 2, rank, "shutdown_done_at")
        assert.is_true(after < SHUTDOWN_WITHIN, describe_world(w))
        measured(("mid_shutdown_%s.rank%d_shutdown_after_kill_s"):format(
          when, rank), after)
      end
      if when == "before" then
        local latency = since_kill(w, 2, 0, "v_failed_at1")
        assert.is_true(latency < LOST_WITHIN, describe_world(w))
      end
    end)
  end

  it("fails the rendezvous at once when rank 0 dies during it", function()
    -- Four ranks expected, three started: the world never completes.
    local w = run_world("store_dies_in_init", 3, {
      env = function() return "WORLD_SIZE=4" end,
    })
    assert.equal(KILLED, w[0].status, describe_world(w))
    assert_exits(w, { 1, 2 }, 1)
    for _, rank in ipairs { 1, 2 } do
      local r = w[rank].results
      assert.equal("EPEERLOST", r.init_code, describe_world(w))
      assert.matches("lost the store at 127%.0%.0%.1:%d+", r.init_error)
      assert.matches("rank 0", r.init_error)
      local after = since_kill(w, 0, rank, "init_failed_at")
      assert.is_true(after < LOST_WITHIN, describe_world(w))
      measured(("store_dies_in_init.rank%d_error_after_kill_s"):format(rank),
        after)
    end
  end)

  it("keeps the others calling each other when rank 0 dies, and says why " ..
      "their shutdown fails", function()
    local w = run_world("store_dies_running", 3)
    assert.equal(KILLED, w[0].status, describe_world(w))
    assert_lost_futures(w, 0, 1, 1, "store_dies_running.peer_lost_latency_s")
    local r = w[1].results
    assert.equal("b", r.b1, describe_world(w))
    assert.equal("3", r.b_after)
    assert.equal("4", r.b_calls_a)
    assert.equal("worker0", r.lost)
    -- The barriers need the store: shutdown fails at once, saying so.
    for _, rank in ipairs { 1, 2 } do
      local rr = w[rank].results
      assert.equal("false", rr.shutdown_ok, describe_world(w))
      assert.equal("EPEERLOST", rr.shutdown_code)
      assert.matches("lost the store at 127%.0%.0%.1:%d+", rr.shutdown_error)
      assert.matches("rank 0 %('worker0'%)", rr.shutdown_error)
      assert.is_true(tonumber(rr.shutdown_seconds) < SHUTDOWN_WITHIN)
    end
    assert_exits(w, { 1, 2 }, 0)
  end)

  it("times out calls to a peer stopped for 3 s and uses it again after",
      function()
    local w = run_world("sigstop", 3)
    assert_clean_shutdown(w, { 0, 1, 2 })
    local r = w[0].results
    assert.equal("ETIMEDOUT", r.v_code, describe_world(w))
    assert.matches("'worker2'", r.v_message)
    local timed_out = tonumber(r.v_timeout_seconds)
    -- It timed out on its own timer, while the peer was still stopped.
    assert.is_true(timed_out >= 0.9 and timed_out < 3, describe_world(w))
    measured("sigstop.timeout_after_s", timed_out)
    assert.equal("b", r.b1)
    assert.is_true(tonumber(r.b_answers_while_stopped) >= 3, describe_world(w))
    assert.equal("5", r.v_after, describe_world(w))
    assert.equal("false", r.v_lost)
    assert.is_true(tonumber(r.late_replies) >= 1, describe_world(w))
    for rank = 0, 2 do
      assert.equal("", w[rank].results.lost or "", describe_world(w))
    end
  end)
end)
