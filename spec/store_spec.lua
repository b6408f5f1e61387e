-- The rendezvous store from Lua: a server and clients in this process, then
-- worlds of separate processes that meet through it.
local ember = require "ember"
local core = require "ember.core"

local HOST = "127.0.0.1"
-- A sanitizer build's module needs its runtime preloaded into lua5.4.
local preload = os.getenv("EMBER_TEST_PRELOAD")
local LUA = (preload and ("env LD_PRELOAD=" .. preload .. " ") or "") .. "lua5.4"

-- Runs fn as a task and drives the loop until it finishes; returns its value.
local function in_task(fn)
  return ember.spawn(fn):wait()
end

local function error_of(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  return err
end

-- The ember.Error a future fails with.
local function failure_of(future)
  local err = error_of(future.wait, future)
  assert.is_true(core.is_error(err), tostring(err))
  return err
end

-- A port nobody listens on (it was free a moment ago).
local function free_port()
  local server = core.store_serve(HOST, 0)
  local port = server:port()
  server:close()
  return port
end

describe("the store in one process", function()
  local server, client

  before_each(function()
    server = core.store_serve(HOST, 0)
    client = core.store_connect(HOST, server:port(), 5):wait()
  end)

  after_each(function()
    client:close()
    server:close()
  end)

  it("serves on a port of its choosing", function()
    assert.is_true(server:port() > 0)
    assert.matches("^ember.StoreServer %(port %d+%)", tostring(server))
    assert.matches("^ember.StoreClient", tostring(client))
    assert.equal(HOST, client:local_address())
    local err = error_of(core.store_serve, HOST, server:port())
    assert.equal("EADDRINUSE", err.code)
  end)

  it("sets and gets bytes", function()
    in_task(function()
      assert.is_true(client:set("name/0", "trainer"):wait())
      assert.equal("trainer", client:get("name/0"):wait())
      local bytes = "a\0b\255" .. ("x"):rep(100000)
      client:set("blob", bytes):wait()
      assert.equal(bytes, client:get("blob", 1):wait())
      client:set("empty", ""):wait()
      assert.equal("", client:get("empty"):wait())
    end)
  end)

  it("works outside any task too", function()
    client:set("k", "v"):wait()
    assert.equal("v", client:get("k", 1):wait())
  end)

  it("makes get wait for a later set", function()
    local got = ember.spawn(function() return client:get("late", 5):wait() end)
    local other = core.store_connect(HOST, server:port(), 5):wait()
    in_task(function()
      ember.sleep(0.05)
      assert.is_false(got:done())
      other:set("late", "here"):wait()
    end)
    assert.equal("here", got:wait())
    other:close()
  end)

  it("times a get out with ETIMEDOUT", function()
    local err = failure_of(client:get("missing", 0.1))
    assert.equal("ETIMEDOUT", err.code)
    assert.matches("key 'missing' was not set within 0.1 s", err.message)
  end)

  it("adds integers, from several clients at once", function()
    local other = core.store_connect(HOST, server:port(), 5):wait()
    local adds = {}
    for i = 1, 20 do
      adds[#adds + 1] = client:add("count", 1)
      adds[#adds + 1] = other:add("count", 2)
    end
    ember.futures.wait_all(adds)
    assert.equal(60, client:add("count", 0):wait())
    assert.equal("60", other:get("count"):wait())
    assert.equal(-3, client:add("fresh", -3):wait())
    client:set("word", "abc"):wait()
    local err = failure_of(client:add("word", 1))
    assert.equal("EINVAL", err.code)
    assert.matches("not an integer", err.message)
    other:close()
  end)

  it("deletes keys and says whether they existed", function()
    client:set("gone", "1"):wait()
    assert.is_true(client:delete("gone"):wait())
    assert.is_false(client:delete("gone"):wait())
    assert.same({ false }, client:check({ "gone" }):wait())
  end)

  it("checks which keys exist", function()
    client:set("a", "1"):wait()
    client:set("c", "3"):wait()
    assert.same({ true, false, true }, client:check({ "a", "b", "c" }):wait())
    assert.same({}, client:check({}):wait())
  end)

  it("waits for keys that another client sets later", function()
    local other = core.store_connect(HOST, server:port(), 5):wait()
    local waited = client:wait({ "rank/0", "rank/1", "rank/2" }, 5)
    in_task(function()
      for rank = 0, 2 do
        ember.sleep(0.02)
        assert.is_false(waited:done())
        other:set("rank/" .. rank, tostring(rank)):wait()
      end
    end)
    assert.is_true(waited:wait())
    other:close()
  end)

  it("names the missing keys when a wait times out", function()
    local keys = {}
    for i = 1, 14 do keys[i] = "w" .. i end
    client:set("w1", "x"):wait()
    local err = failure_of(client:wait(keys, 0.15))
    assert.equal("ETIMEDOUT", err.code)
    assert.matches("keys not set within 0.15 s", err.message)
    assert.matches("'w2'", err.message)
    assert.matches("and 3 more", err.message)
    assert.is_nil(err.message:find("'w1'", 1, true))
  end)

  it("fails pending operations with EPEERLOST when the server goes", function()
    local pending = client:get("never")
    in_task(function() ember.sleep(0.02) end)
    server:close()
    local err = failure_of(pending)
    assert.equal("EPEERLOST", err.code)
    assert.matches("the store at 127.0.0.1:%d+ closed the connection",
      err.message)
    assert.equal("EPEERLOST", failure_of(client:set("k", "v")).code)
  end)

  it("fails pending operations when the client closes", function()
    local pending = client:wait({ "never" })
    local same = core.store_connect(HOST, server:port(), 5):wait()
    same:close()
    same:close() -- twice is fine
    client:close()
    assert.equal("ECANCELED", failure_of(pending).code)
    assert.matches("closed", error_of(client.get, client, "k"))
  end)

  it("checks its arguments", function()
    assert.matches("bad argument #2 to '[%w.]*store_serve' %(a port",
      error_of(core.store_serve, HOST, 70000))
    assert.matches("bad argument #1 to '[%w.]*store_connect'",
      error_of(core.store_connect, "", 1))
    assert.matches("bad argument #1 to 'set' %(a key must not contain '\\0'%)",
      error_of(function() return client:set("a\0b", "v") end))
    assert.matches("bad argument #2 to 'get' %(a timeout in seconds",
      error_of(function() return client:get("k", -1) end))
    assert.matches("bad argument #1 to 'wait' %(keys%[2%] must be a string",
      error_of(function() return client:wait({ "a", 3 }) end))
    assert.matches("bad argument #2 to 'add' %(number has no integer",
      error_of(function() return client:add("k", 1.5) end))
    assert.matches("ember.StoreClient expected",
      error_of(function() return client.get({}, "k") end))
  end)

  it("leaves no futures behind", function()
    collectgarbage()
    collectgarbage()
    local before = core.live_futures()
    in_task(function()
      client:set("x", "1"):wait()
      client:get("x"):wait()
      pcall(function() client:get("nope", 0.05):wait() end)
    end)
    collectgarbage()
    collectgarbage()
    assert.equal(before, core.live_futures())
  end)
end)

describe("connecting", function()
  it("retries until the server comes up", function()
    local port = free_port()
    local connecting = core.store_connect(HOST, port, 5)
    local server
    in_task(function()
      ember.sleep(0.2)
      assert.is_false(connecting:done())
      server = core.store_serve(HOST, port)
    end)
    local client = connecting:wait()
    client:set("k", "v"):wait()
    assert.equal("v", client:get("k"):wait())
    client:close()
    server:close()
  end)

  it("gives up with ETIMEDOUT when nobody serves", function()
    local port = free_port()
    local err = failure_of(core.store_connect(HOST, port, 0.3))
    assert.equal("ETIMEDOUT", err.code)
    assert.equal(("cannot reach the store at 127.0.0.1:%d within 0.3 s " ..
      "(last error: connection refused)"):format(port), err.message)
  end)
end)

-- Worlds of processes, each bounded by `timeout 20`.
describe("the store across processes", function()
  -- A worker: connects, publishes its name, waits for the world, reads every
  -- name, then leaves through a barrier. Rank 0 serves when asked to.
  local WORKER = [[
local core = require "ember.core"
local port, rank, world, serve = tonumber(arg[1]), tonumber(arg[2]),
  tonumber(arg[3]), arg[4] == "serve"
local server = serve and rank == 0 and core.store_serve("127.0.0.1", port)
local store = core.store_connect("127.0.0.1", port, 15):wait()
store:set("name/" .. rank, "worker" .. rank):wait()
local keys = {}
for r = 0, world - 1 do keys[#keys + 1] = "name/" .. r end
store:wait(keys, 15):wait()
local names = {}
for r = 0, world - 1 do names[#names + 1] = store:get("name/" .. r):wait() end
if store:add("left", 1):wait() == world then store:set("all left", "1"):wait() end
store:wait({ "all left" }, 15):wait()
store:set("done/" .. rank, "1"):wait()
if server then -- serve until everyone is done with the store
  local done = {}
  for r = 0, world - 1 do done[#done + 1] = "done/" .. r end
  store:wait(done, 15):wait()
end
io.write("rank ", rank, " saw ", table.concat(names, ","), "\n")
store:close()
if server then server:close() end
]]

  local script

  setup(function()
    script = os.tmpname() .. ".lua"
    local f = assert(io.open(script, "w"))
    f:write(WORKER)
    f:close()
  end)

  teardown(function()
    os.remove(script)
  end)

  -- Starts `world` workers at once; returns their pipes.
  local function start_world(port, world, serve)
    local pipes = {}
    for rank = 0, world - 1 do
      pipes[rank] = assert(io.popen(("timeout 20 %s %s %d %d %d %s 2>&1")
        :format(LUA, script, port, rank, world, serve and "serve" or "")))
    end
    return pipes
  end

  -- Reads every worker's output and exit status (bounded by `timeout 20`).
  local function finish_world(pipes, world)
    local outputs, statuses = {}, {}
    for rank = 0, world - 1 do
      outputs[rank] = pipes[rank]:read("a")
      local _, _, status = pipes[rank]:close()
      statuses[rank] = status
    end
    return outputs, statuses
  end

  local function assert_met(outputs, statuses, world)
    local names = {}
    for r = 0, world - 1 do names[#names + 1] = "worker" .. r end
    for rank = 0, world - 1 do
      assert.equal(0, statuses[rank], outputs[rank])
      assert.matches(("rank %d saw %s\n"):format(rank,
        table.concat(names, ",")), outputs[rank], 1, true)
    end
  end

  it("lets three workers meet at a store this process serves", function()
    local server = core.store_serve(HOST, 0)
    local pipes = start_world(server:port(), 3, false)
    -- Serve while they run: wait for all of them through a client.
    local watcher = core.store_connect(HOST, server:port(), 5):wait()
    local ok, err = pcall(function()
      watcher:wait({ "done/0", "done/1", "done/2" }, 20):wait()
    end)
    local outputs, statuses = finish_world(pipes, 3)
    watcher:close()
    server:close()
    assert(ok, tostring(err) .. "\n" .. table.concat(outputs, "\n", 0, 2))
    assert_met(outputs, statuses, 3)
  end)

  it("lets workers started before rank 0 serves wait for it", function()
    -- Every worker starts at once; rank 0 serves the store itself, so the
    -- others may try to connect before it listens.
    local pipes = start_world(free_port(), 3, true)
    local outputs, statuses = finish_world(pipes, 3)
    assert_met(outputs, statuses, 3)
  end)
end)
