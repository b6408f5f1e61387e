-- Fault injection (EMBER_FAULTS) between processes: RRef control messages
-- and GOODBYE are resent until answered and survive lost messages; user calls
-- are never sent again; held-back responses make calls slow, not wrong; a
-- peer that goes silent is found by heartbeats. Each case starts a world of
-- `ember run spec/fixtures/faults/injection.lua CASE` workers.
local world = require "spec.support.world"

local function run_world(case, n, opts)
  opts = opts or {}
  opts.worker = "spec/fixtures/faults/injection.lua"
  opts.timeout = opts.timeout or 90
  return world.run(case, n, opts)
end

local function faults_for(spec_of_rank)
  return function(rank)
    local spec = spec_of_rank(rank)
    return spec and ("EMBER_FAULTS='%s'"):format(spec) or ""
  end
end

local function assert_no_loss(w)
  for rank = 0, #w do
    local why = world.describe(w)
    assert.not_matches("was lost", w[rank].output, nil, true)
    assert.not_matches("closing the connection", w[rank].output, nil, true)
    for key in pairs(w[rank].results) do
      assert.is_nil(key:match("^lost_"), why)
    end
  end
end

describe("fault injection", function()
  it("loses the first RRef message of every kind and still settles", function()
    local all = "drop:rref_fork:1,drop:rref_delete:1,drop:rref_confirm:1," ..
      "drop:rref_delete_ack:1,drop:rref_child_accept:1," ..
      "drop:rref_child_accept_ack:1"
    local w = run_world("rrefs", 3, { env = faults_for(function() return all end) })
    world.assert_all_ok(w)
    local r, why = w[0].results, world.describe(w)
    assert.equal("5", r.value, why)
    assert.equal("5", r.owner_view, why)
    assert.equal("20", r.last, why)
    assert.equal("true", r.all_zero, why)
    assert.equal("0", r.values_freed, why)
    assert.is_true(tonumber(r.resent_0) + tonumber(r.resent_1) +
      tonumber(r.resent_2) >= 4, why)
    for rank = 0, 2 do
      assert.is_true(tonumber(r["dropped_" .. rank]) >= 2, why)
      assert.not_matches("leak", w[rank].output, nil, true)
      assert.not_matches("gave up", w[rank].output, nil, true)
    end
    assert_no_loss(w)
  end)

  it("resends a lost GOODBYE: shutdown loses no peer", function()
    local w = run_world("goodbye", 2,
      { env = faults_for(function() return "drop:goodbye:1" end) })
    world.assert_all_ok(w)
    assert_no_loss(w)
    -- Acknowledged, not given up on after 2 s.
    for rank = 0, 1 do
      assert.is_true(tonumber(w[rank].results.shutdown_took) < 1.8,
        world.describe(w))
    end
  end)

  it("never sends a user call again: a lost request times out", function()
    local w = run_world("lost_request", 2,
      { env = faults_for(function(rank) return rank == 0 and "drop:request:1" end) })
    world.assert_all_ok(w)
    local r, why = w[0].results, world.describe(w)
    assert.equal("ETIMEDOUT", r.code, why)
    assert.matches("worker1", r.message, nil, true)
    assert.equal("true", r.waited, why)
    assert.equal("0", r.ran_before, why)
    assert.equal("1", r.second, why)
    assert.equal("1", r.dropped, why)
  end)

  it("holds responses back: calls take the delay and succeed", function()
    local w = run_world("slow_responses", 2,
      { env = faults_for(function(rank) return rank == 1 and "delay:response:200" end) })
    world.assert_all_ok(w)
    local why = world.describe(w)
    -- (>= 0.19: libuv's timers count whole milliseconds from a cached time)
    assert.is_true(tonumber(w[0].results.fastest) >= 0.19, why)
    assert.is_true(tonumber(w[1].results.delayed) >= 3, why)
  end)

  it("finds a stopped peer by its silence and fails its call", function()
    local w = run_world("silent_peer", 2)
    world.assert_all_ok(w)
    local r, why = w[0].results, world.describe(w)
    assert.equal("EPEERLOST", r.code, why)
    assert.matches("worker1", r.message, nil, true)
    assert.matches("no heartbeat from worker 'worker1'", r.message, nil, true)
    assert.is_not_nil(r.lost_worker1, why)
    -- Within the 1 s window + 0.5 s of the call, which came at most a
    -- heartbeat interval (0.2 s) after worker 1 was last heard.
    local after = tonumber(r.failed_after)
    assert.is_true(after >= 0.6 and after <= 1.5, why)
    -- Worker 1, resumed, finds the connection closed: its own pause is not
    -- taken for worker 0's silence.
    assert.not_matches("no heartbeat", w[1].output, nil, true)
  end)

  it("keeps a peer paused for 3 s with the default window", function()
    local w = run_world("paused_peer", 2)
    world.assert_all_ok(w)
    local r, why = w[0].results, world.describe(w)
    assert.is_true(tonumber(r.took) >= 2.9, why)
    assert.equal("still here", r.after, why)
    assert_no_loss(w)
  end)

  it("refuses a malformed EMBER_FAULTS at init_rpc", function()
    local w = run_world("bad_options", 1,
      { env = faults_for(function() return "drop:request:1,drop:bogus:2" end) })
    world.assert_all_ok(w)
    local r, why = w[0].results, world.describe(w)
    assert.matches("init_rpc: bad EMBER_FAULTS: bad fault rule 'drop:bogus:2'",
      r.faults, nil, true)
    assert.matches("rref_child_accept", r.faults, nil, true)
    assert.matches("heartbeat_interval (2 s) must be below heartbeat_window (1 s)",
      r.interval, nil, true)
    assert.matches("heartbeat_window must be a number of seconds > 0",
      r.window, nil, true)
    assert.matches("faults must be a string", r.faults_type, nil, true)
    assert.is_not_nil(why)
  end)
end)
