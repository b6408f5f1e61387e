-- The listen rule of the trust model (README "Trust model"): without a
-- secret a worker accepts connections on loopback only unless --listen names
-- an address, and says so at start-up; with a secret peers must prove it.
-- (The handshake's refusals of strangers are in spec/c/test_security.c.)
local example = require "spec.support.example"
local world = require "spec.support.world"
local launch = require "ember.launch"

local FIXTURE = "spec/fixtures/security/listen.lua"

-- Runs the fixture as a world of one with `env` (a string of VAR=value);
-- returns its output and its RESULT lines.
local function run_solo(env)
  local output = example.sh(("env -u EMBER_SECRET -u EMBER_LISTEN -u EMBER_HOST "
    .. "MASTER_ADDR=${MASTER_ADDR:-127.0.0.1} MASTER_PORT=%d %s %s run %s"):format(
    world.free_port(), env, example.EMBER, FIXTURE), 30)
  local results = {}
  for key, value in output:gmatch("RESULT (%S+) ([^\n]*)") do
    results[key] = value
  end
  return output, results
end

describe("the listen rule", function()
  it("binds loopback only without a secret, and says so", function()
    local output, r = run_solo("")
    assert.equal("0", r.done, output)
    assert.equal("127.0.0.1,127.0.0.1", r.listening)
    assert.matches("no EMBER_SECRET: workers accept connections on loopback "
      .. "only", output, nil, true)
  end)

  it("binds the --listen address without a secret, with a warning", function()
    local output, r = run_solo("EMBER_LISTEN=0.0.0.0")
    assert.equal("0", r.done, output)
    assert.equal("0.0.0.0,127.0.0.1", r.listening)
    assert.matches("warning: no EMBER_SECRET: 'solo' accepts unauthenticated "
      .. "peers on 0.0.0.0:", output, nil, true)
  end)

  it("says peers must prove the secret when there is one", function()
    local output, r = run_solo("EMBER_SECRET=s3cret")
    assert.equal("0", r.done, output)
    assert.equal("127.0.0.1,127.0.0.1", r.listening)
    assert.matches("peers must prove EMBER_SECRET", output, nil, true)
    assert.not_matches("warning", output, nil, true)
  end)

  it("refuses a master on another host without a secret or --listen",
    function()
    -- Refused before anything is bound or sent.
    local output, r = run_solo("MASTER_ADDR=10.213.77.1")
    assert.is_nil(r.done, output)
    assert.matches("the world's master 10.213.77.1 is not on this host's "
      .. "loopback", r.init_error, nil, true)
    assert.matches("set EMBER_SECRET", r.init_error, nil, true)
    assert.matches("--listen ADDR", r.init_error, nil, true)
  end)

  it("refuses a listen address that is not an address", function()
    local output, r = run_solo("'EMBER_LISTEN=0.0.0.0; rm'")
    assert.is_nil(r.done, output)
    assert.matches("init_rpc: listen must be an address", r.init_error, nil,
      true)
  end)

  it("is passed on by ember launch --listen", function()
    local opts = assert(launch.parse { "--listen", "0.0.0.0", "-n", "2",
      FIXTURE })
    local plan = assert(launch.plan(opts, {
      getenv = function() return nil end,
      free_port = function() return 4242 end,
      executable = "ember", exists = function() return true end }))
    for _, worker in ipairs(plan.workers) do
      assert.equal("0.0.0.0", worker.env.EMBER_LISTEN)
    end
    local _, err = launch.parse { "--listen", "a b", "-n", "2", FIXTURE }
    assert.matches("--listen", err, nil, true)
  end)
end)
