-- A silent partition: two workers in two network namespaces, and the link
-- between them taken down while a call waits (packets vanish: no reset, no
-- error, as when a cable or a switch dies). TCP would take minutes to
-- notice; heartbeats find it within the window, and the call fails with
-- EPEERLOST naming the peer. Needs root for the namespaces: pending with the
-- reason otherwise.
local netns = require "spec.support.netns"

local WINDOW = 2       -- seconds: EMBER_HEARTBEAT_WINDOW
local INTERVAL = 0.25  -- seconds: EMBER_HEARTBEAT_INTERVAL
local EMBER = os.getenv("EMBER_BIN") or "build/bin/ember"

local function uptime()
  local f = assert(io.open("/proc/uptime"))
  local seconds = f:read("n")
  f:close()
  return seconds
end

local function read_file(path)
  local f = io.open(path, "rb")
  if f == nil then return "" end
  local text = f:read("a")
  f:close()
  return text
end

local function results_of(text)
  local results = {}
  for key, value in text:gmatch("RESULT (%S+) ([^\n]*)") do
    results[key] = value
  end
  return results
end

-- Waits (polling) until `done()` or `seconds` pass; returns done().
local function wait_for(done, seconds)
  local deadline = uptime() + seconds
  while not done() and uptime() < deadline do
    os.execute("sleep 0.02")
  end
  return done()
end

describe("a silent partition between network namespaces", function()
  it("fails the pending call within the heartbeat window + 0.5 s", function()
    local ok, reason = netns.available()
    if not ok then
      pending(reason)
      return
    end
    netns.with(2, function(net)
      local dir = os.tmpname()
      os.remove(dir)
      assert(os.execute("mkdir -p " .. dir))
      local root = io.popen("pwd"):read("l")
      local secret = ("partition-%d-%d"):format(os.time(), math.random(1e9))
      for rank = 0, 1 do
        local worker = ("cd %s && RANK=%d WORLD_SIZE=2 MASTER_ADDR=%s "
          .. "MASTER_PORT=29517 EMBER_SECRET=%s EMBER_HEARTBEAT_WINDOW=%g "
          .. "EMBER_HEARTBEAT_INTERVAL=%g timeout 60 %s run "
          .. "spec/fixtures/faults/partition.lua >%s/out.%d 2>&1; "
          .. "echo $? >%s/rc.%d"):format(root, rank, net:address(1), secret,
          WINDOW, INTERVAL, EMBER, dir, rank, dir, rank)
        os.execute(net:exec(rank + 1, worker) .. " &")
      end
      local out0 = dir .. "/out.0"
      assert.is_true(wait_for(function()
        return read_file(out0):find("RESULT calling", 1, true) ~= nil
      end, 30), read_file(out0) .. read_file(dir .. "/out.1"))
      local cut_at = uptime()
      net:link_down(2)
      local finished = wait_for(function()
        return read_file(dir .. "/rc.0") ~= "" and
          read_file(dir .. "/rc.1") ~= ""
      end, 60)
      local outputs = "--- a\n" .. read_file(out0) .. "--- b\n" ..
        read_file(dir .. "/out.1")
      os.execute("rm -rf " .. dir)
      assert.is_true(finished, outputs)
      local r = results_of(outputs:match("^(.-)%-%-%- b"))
      assert.equal("false", r.ok, outputs)
      assert.equal("EPEERLOST", r.code, outputs)
      assert.matches("no heartbeat from worker 'b'", r.error, 1, true)
      local took = tonumber(r.failed_at) - cut_at
      print(("# silent partition found %.2f s after the cut (window %g s)")
        :format(took, WINDOW))
      assert.is_true(took <= WINDOW + 0.5, outputs)
      assert.is_true(took >= WINDOW - INTERVAL - 0.1, outputs)
      -- Both leave on their own: b found a lost the same way.
      local a_part, b_part = outputs:match("^(.-)%-%-%- b\n(.*)$")
      assert.matches("RESULT done 0", a_part, 1, true)
      assert.matches("RESULT done 0", b_part, 1, true)
    end)
  end)
end)
