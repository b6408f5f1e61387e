-- `ember repl --join HOST:PORT`: a REPL that joins a running world of
-- `ember launch`ed workers (spec/fixtures/repl/world.lua) as a client, driven
-- through its standard input. Each world serves until a REPL asks worker0 to
-- stop it; then it shuts down gracefully and must exit 0 without complaint.
local world_support = require "spec.support.world"

local EMBER = os.getenv("EMBER_BIN") or "build/bin/ember"
local WORLD = "spec/fixtures/repl/world.lua"
local FUNCS = "spec.fixtures.repl.funcs"

-- The specs must not pick up a real world's or scheduler's variables.
local CLEAN_ENV = "env -u RANK -u WORLD_SIZE -u LOCAL_RANK -u MASTER_ADDR"
  .. " -u MASTER_PORT -u EMBER_SECRET -u EMBER_HOST -u SLURM_PROCID"
  .. " -u SLURM_NTASKS -u OMPI_COMM_WORLD_RANK -u OMPI_COMM_WORLD_SIZE"

local free_port, read_file = world_support.free_port, world_support.read_file

local function write_file(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

local function temp_dir()
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. dir))
  return dir
end

-- --- A world in the background ----------------------------------------------

local World = {}
World.__index = World

-- Starts `ember launch -n n world.lua` on a free port, bounded in time; `env`
-- is "NAME=value ..." for the workers.
local function start_world(n, env)
  local dir = temp_dir()
  local port = free_port()
  local world = setmetatable({ dir = dir, port = port,
    address = "127.0.0.1:" .. port }, World)
  assert(os.execute(([[
(%s %s timeout 60 %s launch --master %s -n %d %s >%s/out 2>&1 </dev/null &
 echo $! >%s/pid; wait $!; echo $? >%s/rc) >/dev/null 2>&1 </dev/null &
]]):format(CLEAN_ENV, env or "", EMBER, world.address, n, WORLD, dir, dir, dir)))
  return world
end

-- Waits up to `seconds` for the world to exit; its status, or nil.
function World:wait(seconds)
  for _ = 1, seconds * 10 do
    local rc = read_file(self.dir .. "/rc")
    if rc and rc:match("%d") then
      self.status = tonumber(rc:match("%d+"))
      return self.status
    end
    os.execute("sleep 0.1")
  end
  return nil
end

function World:output()
  return read_file(self.dir .. "/out") or ""
end

-- Stops it if it still runs (a failed spec), and removes its files.
function World:clean()
  if self.status == nil then
    local pid = read_file(self.dir .. "/pid")
    if pid and pid:match("^%d+") then
      os.execute("kill " .. pid:match("^%d+") .. " 2>/dev/null")
      self:wait(5)
    end
  end
  os.execute("rm -rf " .. self.dir)
end

-- --- The REPL -------------------------------------------------------------------

-- Runs `ember repl ARGS` with `input` on its standard input; returns
-- {status=, out=, err=}.
local function run_repl(args, input, env)
  local dir = temp_dir()
  write_file(dir .. "/in", input or "")
  local _, _, status = os.execute(("%s %s timeout 30 %s repl %s <%s/in " ..
    ">%s/out 2>%s/err"):format(CLEAN_ENV, env or "", EMBER, args, dir, dir,
    dir))
  local result = { status = status, out = read_file(dir .. "/out") or "",
    err = read_file(dir .. "/err") or "" }
  os.execute("rm -rf " .. dir)
  return result
end

local function describe_run(name, r)
  return ("--- %s (status %s)\n--- stdout:\n%s\n--- stderr:\n%s"):format(
    name, tostring(r.status), r.out, r.err)
end

local function lines(...)
  return table.concat({ ... }, "\n") .. "\n"
end

-- What a world that went well printed: nothing that looks like trouble.
local function assert_quiet_world(world, why)
  local out = world:output()
  assert.equal(0, world.status, why)
  assert.matches("done worker0", out, nil, true, why)
  assert.matches("done worker1", out, nil, true, why)
  for _, bad in ipairs { "ember[", "rror", "lost", "leak", "traceback",
      "refus" } do
    assert.not_matches(bad, out, nil, true, why)
  end
end

describe("ember repl --join", function()
  describe("in a world without a secret", function()
    local world, first, second, why

    lazy_setup(function()
      world = start_world(2)
      first = run_repl("--join " .. world.address, lines(
        ('funcs = require "%s"'):format(FUNCS),
        "workers()",
        ('rpc.rpc_sync("worker1", "%s:add", {1200, 34})'):format(FUNCS),
        ('rpc.rpc_sync("worker0", "%s:fail", {"kaboom-from-worker0"})'):format(
          FUNCS),
        ('r = rpc.remote("worker1", "%s:make_counter", {700})'):format(FUNCS),
        "r:to_here()",
        "r:rpc_sync():add(7)",
        "r:to_here()",
        [[on("worker1", "return 'evaluated' .. '-here'")]],
        [[rpc.rpc_sync("worker1", "ember:eval", {"return 'bypass' .. '-ok'"})]],
        "workers()"))
      second = run_repl("--join " .. world.address, lines(
        ('rpc.rpc_sync("worker0", "%s:add", {4000, 321})'):format(FUNCS),
        "workers()",
        ('rpc.rpc_sync("worker0", "%s:stop")'):format(FUNCS)))
      world:wait(20)
      why = table.concat({ describe_run("first REPL", first),
        describe_run("second REPL", second),
        "--- world (status " .. tostring(world.status) .. "):\n" ..
        world:output() }, "\n")
    end)

    lazy_teardown(function()
      if world then world:clean() end
    end)

    it("says which world it joined, as whom", function()
      assert.matches(("joined the world at %s as 'repl2' (id 2); workers: " ..
        "worker0, worker1"):format(world.address), first.out, nil, true, why)
    end)

    it("lists the workers with their state and their own counters", function()
      assert.matches("id%s+name%s+state%s+sent%s+served%s+in flight", first.out,
        nil, false, why)
      for rank = 0, 1 do
        assert.matches(("\n%%s*%d%%s+worker%d%%s+connected%%s+%%d+%%s+%%d+" ..
          "%%s+%%d+"):format(rank, rank), first.out, nil, false, why)
      end
      -- By the second session, worker0 has served the first one's calls.
      local served = second.out:match("\n%s*0%s+worker0%s+connected%s+%d+%s+(%d+)")
      assert.is_truthy(served and tonumber(served) >= 1, why)
    end)

    it("calls a worker's function and shows a remote error", function()
      assert.matches("> 1234\n", first.out, nil, true, why)
      assert.matches("RemoteError on worker 'worker0': kaboom-from-worker0",
        first.err, nil, true, why)
    end)

    -- Needs ember.rref (rpc.remote and RRef proxies).
    it("holds an RRef and uses it", function()
      assert.matches("> Counter(700)\n", first.out, nil, true, why)
      assert.matches("> 707\n", first.out, nil, true, why)
      assert.matches("> Counter(707)\n", first.out, nil, true, why)
    end)

    it("refuses on() on the worker's side without a secret", function()
      assert.matches("on(worker1): remote eval is disabled: this world has " ..
        "no secret (start the workers with EMBER_SECRET set)", first.err, nil,
        true, why)
      assert.not_matches("evaluated-here", first.out, nil, true, why)
      -- The worker refuses, not only the REPL: a direct call fails too.
      assert.matches("RemoteError on worker 'worker1': remote eval is disabled",
        first.err, nil, true, why)
      assert.not_matches("bypass-ok", first.out, nil, true, why)
    end)

    it("leaves cleanly: another session joins, and the world ends well", function()
      assert.equal(0, first.status, why)
      assert.matches("left the world at " .. world.address, first.out, nil,
        true, why)
      for _, bad in ipairs { "lost", "leak", "warning", "ember[" } do
        assert.not_matches(bad, first.err, nil, true, why)
      end
      assert.equal(0, second.status, why)
      assert.matches("as 'repl3' (id 3)", second.out, nil, true, why)
      assert.matches("> 4321\n", second.out, nil, true, why)
      assert.matches("> stopping worker0\n", second.out, nil, true, why)
      assert.equal("", second.err, why)
      assert_quiet_world(world, why)
    end)
  end)

  describe("in a world with a secret", function()
    local world, session, why

    lazy_setup(function()
      world = start_world(2, "EMBER_SECRET=repl-spec-secret")
      session = run_repl("--join " .. world.address, lines(
        [[on("worker1", "return 1 + 1")]],
        [[on("worker1", "return rank_name, print")]],
        [[on("worker0", "error('kaput')")]],
        ('rpc.rpc_sync("worker0", "%s:stop")'):format(FUNCS)),
        "EMBER_SECRET=repl-spec-secret")
      world:wait(20)
      why = describe_run("REPL", session) .. "\n--- world (status " ..
        tostring(world.status) .. "):\n" .. world:output()
    end)

    lazy_teardown(function()
      if world then world:clean() end
    end)

    it("evaluates text chunks on a worker with its globals", function()
      assert.matches("> 2\n", session.out, nil, true, why)
      assert.matches("> worker1\tfunction: ", session.out, nil, true, why)
      assert.matches("on(worker0):1: kaput", session.err, nil, true, why)
      assert.not_matches("remote eval is disabled", session.err, nil, true, why)
    end)

    it("leaves cleanly, and the world ends well", function()
      assert.equal(0, session.status, why)
      assert.matches("left the world at " .. world.address, session.out, nil,
        true, why)
      assert_quiet_world(world, why)
    end)
  end)

  it("refuses an address that is not HOST:PORT", function()
    local r = run_repl("--join nonsense")
    assert.equal(2, r.status, describe_run("REPL", r))
    assert.matches("--join expects HOST:PORT", r.err, nil, true)
  end)

  it("gives up on an address where no world listens", function()
    local port = free_port()
    local r = run_repl(("--join 127.0.0.1:%d --timeout 1"):format(port))
    assert.equal(1, r.status, describe_run("REPL", r))
    assert.matches(("cannot join the world at 127.0.0.1:%d: cannot reach " ..
      "the store"):format(port), r.err, nil, true)
  end)

  it("describes itself with --help", function()
    local r = run_repl("--help")
    assert.equal(0, r.status)
    assert.matches("--join HOST:PORT", r.out, nil, true)
    assert.matches("workers()", r.out, nil, true)
    assert.matches("on(worker, \"code\")", r.out, nil, true)
    assert.matches("secret", r.out, nil, true)
  end)
end)
