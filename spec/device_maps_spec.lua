-- Tensors on CUDA devices over RPC, with and without device maps, on
-- simulated devices (EMBER_CUDA_SIM) so that this runs without a GPU: the
-- rule is the same on real ones.
local world = require "spec.support.world"

local function run_world(case, n, opts)
  opts = opts or {}
  opts.worker = "spec/fixtures/rpc/devices.lua"
  local extra = opts.extra or ""
  opts.env = opts.env or function() return "EMBER_CUDA_SIM=2 " .. extra end
  return world.run(case, n, opts)
end
local describe_world, assert_all_ok = world.describe, world.assert_all_ok

describe("device maps", function()
  it("put a mapped CUDA tensor on the mapped device, and replies back", function()
    local w = run_world("mapped", 2)
    assert_all_ok(w)
    local r = w[0].results
    assert.equal("cuda:1", r.mapped_arrived, describe_world(w))
    assert.equal("3.0", r.mapped_sum)
    assert.equal("cuda:0", r.reply_device)
    assert.equal("7,7", r.reply_values)
    assert.equal("cpu", r.unmapped_arrived)
    assert.equal("cpu", r.cpu_arrived)
    assert.equal("cpu", r.reply_unmapped)
    assert.equal("cuda:0", r.remote_reply_device)
  end)

  it("deliver CUDA tensors to the CPU when no map is given", function()
    local w = run_world("unmapped", 2)
    assert_all_ok(w)
    local r = w[0].results
    assert.equal("cpu", r.arrived, describe_world(w))
    assert.equal("3.0", r.sum)
    assert.equal("cpu", r.reply_device)
  end)

  local bad = {
    not_table = "device_maps%['worker1'%] must be a table",
    bad_index = "device indices are integers from 0 to 15",
    no_device = "maps cuda:5, but this worker has 2 CUDA devices",
    not_injective = "maps both cuda:0 and cuda:1 to cuda:0",
    unknown_worker = "names 'nobody', which is not a worker of this world",
  }
  for which, message in pairs(bad) do
    it("refuse a bad map (" .. which .. ")", function()
      local w = run_world("bad_map", 2, { extra = "BAD_MAP=" .. which, timeout = 30 })
      assert.matches(message, w[0].results.error or "", 1, false)
    end)
  end

  it("refuse a map to a device the peer lacks", function()
    local w = run_world("bad_map", 2, { timeout = 30, env = function(rank)
      return "BAD_MAP=peer_lacks EMBER_CUDA_SIM=" .. (rank == 0 and 2 or 1)
    end })
    assert.matches("maps cuda:0 to cuda:3, but 'worker1' has 1 CUDA device",
      w[0].results.error or "", 1, true)
  end)
end)
