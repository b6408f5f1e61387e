-- `ember launch`: option parsing and the plan (in process), then the launcher
-- itself (the ember executable): environment, labelled output, failures,
-- signals, several nodes, Slurm and Open MPI.
local launch = require "ember.launch"

local EMBER = os.getenv("EMBER_BIN") or "build/bin/ember"

-- The specs must not pick up a real scheduler's or world's variables.
local CLEAN_ENV = "env -u SLURM_PROCID -u SLURM_NTASKS -u SLURM_LOCALID"
  .. " -u SLURM_JOB_NODELIST -u SLURM_STEP_NODELIST -u SLURM_NODELIST"
  .. " -u OMPI_COMM_WORLD_RANK -u OMPI_COMM_WORLD_SIZE"
  .. " -u OMPI_COMM_WORLD_LOCAL_RANK -u MASTER_ADDR -u MASTER_PORT"
  .. " -u RANK -u WORLD_SIZE -u LOCAL_RANK"

local function write_file(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

local function read_file(path)
  local f = assert(io.open(path))
  local text = f:read("a")
  f:close()
  return text
end

-- A temporary file holding `source`, removed when the current test ends.
local function temp_file(source, suffix)
  local path = os.tmpname() .. (suffix or ".lua")
  write_file(path, source)
  finally(function() os.remove(path) end)
  return path
end

-- Runs a shell command bounded in time; returns its stdout (with stderr
-- unless `split`), its exit status, and its stderr when split.
local function sh(command, split)
  local err_path = os.tmpname()
  local pipe = assert(io.popen(("timeout 30 %s </dev/null 2>%s"):format(
    command, split and err_path or "&1")))
  local output = pipe:read("a")
  local _, _, status = pipe:close()
  local errors = read_file(err_path)
  os.remove(err_path)
  return output, status, errors
end

-- `ember launch ARGS` with a clean environment plus `env` ("NAME=value ...").
local function ember_launch(args, env, split)
  return sh(("%s %s %s launch %s"):format(CLEAN_ENV, env or "", EMBER, args),
    split)
end

local function lines_of(text)
  local lines = {}
  for line in text:gmatch("([^\n]*)\n") do lines[#lines + 1] = line end
  return lines
end

-- A worker script that prints what the launcher gave it.
local SHOW_ENV = [[
print(("rank=%s local=%s world=%s master=%s:%s launched=%s args=%s"):format(
  os.getenv("RANK"), os.getenv("LOCAL_RANK"), os.getenv("WORLD_SIZE"),
  os.getenv("MASTER_ADDR"), os.getenv("MASTER_PORT"),
  os.getenv("EMBER_LAUNCHED"), table.concat(arg, ",")))
]]

-- Sends signals to a background command once its workers printed "ready
-- PID" (READY of them), then reports what happened to the command and to
-- those PIDs. usage: sh HARNESS OUT READY "SIGNALS" COMMAND...
local HARNESS = [[
out=$1; ready=$2; signals=$3; shift 3
"$@" >"$out" 2>&1 &
pid=$!
tries=0
while [ "$(grep -c ' ready ' "$out")" -lt "$ready" ]; do
  tries=$((tries + 1))
  if [ $tries -gt 400 ]; then
    kill -9 $pid; cat "$out"; echo "harness: workers never got ready"; exit 99
  fi
  sleep 0.05
done
for s in $signals; do kill -$s $pid; sleep 0.3; done
wait $pid
status=$?
cat "$out"
for p in $(sed -n 's/.* ready \([0-9]*\) .*/\1/p' "$out"); do
  kill -0 "$p" 2>/dev/null && echo "harness: worker $p still alive"
done
echo "harness: launcher status $status"
]]

local function with_signals(ready, signals, command)
  local harness = temp_file(HARNESS, ".sh")
  local out = temp_file("", ".out")
  local output = sh(("sh %s %s %d '%s' %s"):format(harness, out, ready,
    signals, command))
  return output, tonumber(output:match("harness: launcher status (%d+)"))
end

-- A fake system for the plan: environment `env`, free port 4242.
local function system(env)
  return {
    getenv = function(name) return env[name] end,
    free_port = function() return 4242 end,
    executable = "/opt/ember/bin/ember",
    exists = function(path) return path ~= "missing.lua" end,
  }
end

local function plan_of(args, env)
  local opts = assert(launch.parse(args))
  return launch.plan(opts, system(env or {}))
end

local function ranks_of(plan)
  local ranks = {}
  for i, worker in ipairs(plan.workers) do ranks[i] = worker.env.RANK end
  return table.concat(ranks, ",")
end

describe("ember.launch.parse", function()
  it("reads options up to the script and keeps the script's arguments", function()
    local opts = assert(launch.parse({ "-n", "4", "--grace=2.5", "s.lua",
      "-n", "9", "--x" }))
    assert.equal(4, opts.nproc)
    assert.equal(2.5, opts.grace)
    assert.equal("s.lua", opts.script)
    assert.same({ "-n", "9", "--x" }, opts.args)
  end)

  it("takes -nN, --name=value, torchrun's spellings and --", function()
    assert.equal(3, launch.parse({ "-n3", "s.lua" }).nproc)
    assert.equal(5, launch.parse({ "--nproc-per-node=5", "s.lua" }).nproc)
    assert.equal(6, launch.parse({ "--nproc_per_node", "6", "s.lua" }).nproc)
    local opts = launch.parse({ "--node_rank", "1", "--nnodes=2", "--",
      "-odd.lua" })
    assert.equal(1, opts.node_rank)
    assert.equal(2, opts.nnodes)
    assert.equal("-odd.lua", opts.script)
  end)

  it("parses --master HOST:PORT, IPv6 in brackets too", function()
    assert.same({ host = "10.0.0.1", port = 1234 },
      launch.parse({ "--master", "10.0.0.1:1234", "s.lua" }).master)
    assert.same({ host = "::1", port = 80 },
      launch.parse({ "--master=[::1]:80", "s.lua" }).master)
  end)

  it("rejects bad values naming the option", function()
    local cases = {
      { { "-n", "abc", "s.lua" }, "%-n needs a whole number >= 1, not 'abc'" },
      { { "-n", "0", "s.lua" }, "not '0'" },
      { { "-n", "-2", "s.lua" }, "not '%-2'" },
      { { "-n", "1.5", "s.lua" }, "not '1.5'" },
      { { "--nnodes", "0", "s.lua" }, "%-%-nnodes needs" },
      { { "--node-rank", "x", "s.lua" }, "%-%-node%-rank needs" },
      { { "--grace", "-1", "s.lua" }, "%-%-grace needs a number of seconds" },
      { { "--master", "nohost", "s.lua" }, "%-%-master needs HOST:PORT" },
      { { "--master", "h:0", "s.lua" }, "%-%-master needs HOST:PORT" },
      { { "--master", "h:70000", "s.lua" }, "%-%-master needs HOST:PORT" },
      { { "--master", "a:b:1", "s.lua" }, "%-%-master needs HOST:PORT" },
      { { "--bogus", "s.lua" }, "unknown option '%-%-bogus'" },
      { { "-n" }, "%-n needs a value" },
    }
    for _, case in ipairs(cases) do
      local opts, err = launch.parse(case[1])
      assert.is_nil(opts, table.concat(case[1], " "))
      assert.matches(case[2], err)
    end
  end)
end)

describe("ember.launch.plan", function()
  it("runs ember itself on the script, ranks from 0, a free local port", function()
    local plan = assert(plan_of({ "-n", "3", "s.lua", "a", "b" }))
    assert.same({ "/opt/ember/bin/ember", "run", "s.lua", "a", "b" }, plan.argv)
    assert.equal("0,1,2", ranks_of(plan))
    assert.same({ RANK = "2", LOCAL_RANK = "2", WORLD_SIZE = "3",
      MASTER_ADDR = "127.0.0.1", MASTER_PORT = "4242", EMBER_LAUNCHED = "1" },
      plan.workers[3].env)
    assert.equal("rank 2", plan.workers[3].label)
  end)

  it("numbers a later node's workers after the earlier nodes'", function()
    local plan = assert(plan_of({ "-n", "2", "--nnodes", "3", "--node-rank",
      "2", "--master", "h:1", "s.lua" }))
    assert.equal("4,5", ranks_of(plan))
    assert.equal("6", plan.workers[1].env.WORLD_SIZE)
    assert.equal("0", plan.workers[1].env.LOCAL_RANK)
    assert.equal("h", plan.workers[1].env.MASTER_ADDR)
  end)

  it("needs a master, -n, a node rank below the node count and a script", function()
    local cases = {
      { { "-n", "2", "--nnodes", "2", "s.lua" }, "%-%-master HOST:PORT is needed" },
      { { "s.lua" }, "missing %-n N" },
      { { "-n", "1", "--nnodes", "2", "--node-rank", "2", "--master", "h:1",
        "s.lua" }, "%-%-node%-rank 2 is not below %-%-nnodes 2" },
      { { "-n", "1" }, "missing SCRIPT" },
      { { "-n", "1", "-" }, "SCRIPT cannot be '%-'" },
      { { "-n", "1", "missing.lua" }, "cannot find the script 'missing.lua'" },
    }
    for _, case in ipairs(cases) do
      local plan, err = plan_of(case[1])
      assert.is_nil(plan, table.concat(case[1], " "))
      assert.matches(case[2], err)
    end
  end)

  it("takes the master of several nodes from MASTER_ADDR and MASTER_PORT", function()
    local plan = assert(plan_of({ "-n", "1", "--nnodes", "2", "s.lua" },
      { MASTER_ADDR = "head", MASTER_PORT = "7000" }))
    assert.equal("head", plan.master_addr)
    assert.equal(7000, plan.master_port)
    plan = assert(plan_of({ "-n", "1", "--nnodes", "2", "s.lua" },
      { MASTER_ADDR = "head" }))
    assert.equal(29500, plan.master_port)
    local _, err = plan_of({ "-n", "1", "--nnodes", "2", "s.lua" },
      { MASTER_ADDR = "head", MASTER_PORT = "port" })
    assert.matches("MASTER_PORT=port is not a port", err)
  end)

  it("runs one launcher per Slurm task: node rank, nodes, local rank, master", function()
    local env = { SLURM_PROCID = "3", SLURM_NTASKS = "4", SLURM_LOCALID = "1",
      SLURM_JOB_NODELIST = "gpu[07-09,12],cpu1" }
    local plan = assert(plan_of({ "s.lua" }, env))
    assert.equal(3, plan.node_rank)
    assert.equal(4, plan.nnodes)
    assert.equal("3", ranks_of(plan))
    assert.equal("4", plan.workers[1].env.WORLD_SIZE)
    assert.equal("1", plan.workers[1].env.LOCAL_RANK)
    assert.equal("gpu07", plan.master_addr)
    assert.equal(29500, plan.master_port)
    plan = assert(plan_of({ "-n", "2", "s.lua" }, env))
    assert.equal("6,7", ranks_of(plan))
    assert.equal("2", plan.workers[1].env.LOCAL_RANK)
    assert.equal("3", plan.workers[2].env.LOCAL_RANK)
  end)

  it("lets options win over the scheduler's variables", function()
    local plan = assert(plan_of({ "-n", "1", "--nnodes", "1", "--node-rank",
      "0", "s.lua" }, { SLURM_PROCID = "3", SLURM_NTASKS = "4" }))
    assert.equal("0", ranks_of(plan))
    assert.equal("127.0.0.1", plan.master_addr)
  end)

  it("reads Open MPI's rank and size", function()
    local plan = assert(plan_of({ "s.lua" }, { OMPI_COMM_WORLD_RANK = "1",
      OMPI_COMM_WORLD_SIZE = "2", MASTER_ADDR = "n0", MASTER_PORT = "5" }))
    assert.equal("1", ranks_of(plan))
    assert.equal("2", plan.workers[1].env.WORLD_SIZE)
    assert.equal("n0", plan.master_addr)
    local _, err = plan_of({ "s.lua" }, { OMPI_COMM_WORLD_RANK = "1",
      OMPI_COMM_WORLD_SIZE = "2" })
    assert.matches("%-%-master HOST:PORT is needed", err)
  end)

  it("rejects a scheduler's malformed variables", function()
    local _, err = plan_of({ "s.lua" }, { SLURM_PROCID = "x", SLURM_NTASKS = "2" })
    assert.matches("SLURM_PROCID=x and SLURM_NTASKS=2", err)
  end)

  it("finds the first host of a Slurm node list", function()
    assert.equal("n1", launch.first_slurm_host("n1,n2"))
    assert.equal("node01", launch.first_slurm_host("node[01-04]"))
    assert.equal("a5-ib", launch.first_slurm_host("a[5,7]-ib,b1"))
    assert.equal("solo", launch.first_slurm_host("solo"))
  end)
end)

describe("ember launch", function()
  it("gives each worker its rank and world, prefixing every line", function()
    local script = temp_file(SHOW_ENV .. "io.stderr:write('to stderr\\n')\n")
    local out, status, errors = ember_launch("-n 3 " .. script .. " x y",
      nil, true)
    assert.equal(0, status, out .. errors)
    local port
    for _, line in ipairs(lines_of(out)) do
      local rank, rest = line:match("^%[rank (%d)%] rank=(.*)$")
      assert.truthy(rank, line)
      assert.equal(rank, rest:match("^(%d)"))
      assert.matches("local=" .. rank .. " world=3 master=127%.0%.0%.1:%d+ "
        .. "launched=1 args=x,y$", rest)
      port = port or rest:match(":(%d+) ")
      assert.equal(port, rest:match(":(%d+) "))
    end
    assert.equal(3, #lines_of(out))
    local _, stderr_lines = errors:gsub("%[rank %d%] to stderr\n", "")
    assert.equal(3, stderr_lines)
  end)

  it("passes a last line without a newline on at the end", function()
    local script = temp_file("io.write('no newline')\n")
    local out, status = ember_launch("-n 1 " .. script)
    assert.equal(0, status)
    assert.equal("[rank 0] no newline\n", out)
  end)

  it("names the failing worker and shows its error", function()
    local script = temp_file([[
      if os.getenv("RANK") == "1" then error("boom in rank one") end
    ]])
    local out, status = ember_launch("-n 3 " .. script)
    assert.equal(1, status, out)
    assert.matches("%[rank 1%] ember: [^\n]*boom in rank one", out)
    assert.matches("ember launch: rank 1 failed: exited with status 1\n", out)
    assert.is_nil(out:find("rank 0 failed", 1, true))
  end)

  it("exits with the failed worker's status", function()
    local script = temp_file("if os.getenv('RANK') == '2' then os.exit(3) end\n")
    local out, status = ember_launch("-n 3 " .. script)
    assert.equal(3, status, out)
    assert.matches("rank 2 failed: exited with status 3", out)
  end)

  it("reports a worker killed by a signal", function()
    -- The shell's parent is the worker.
    local script = temp_file("os.execute('kill -KILL $PPID')\n")
    local out, status = ember_launch("-n 1 " .. script)
    assert.equal(1, status, out)
    assert.matches("rank 0 failed: killed by signal 9 %(SIGKILL%)", out)
  end)

  it("stops the others after the grace period when one fails", function()
    local script = temp_file([[
      io.stdout:setvbuf("line")
      print("ready " .. io.open("/proc/self/stat"):read("n") .. " ")
      if os.getenv("RANK") == "0" then
        require("ember").sleep(0.2)
        error("rank zero gives up")
      end
      require("ember").sleep(20)
    ]])
    local out, status = with_signals(3, "", ("%s %s launch --grace 0.3 -n 3 %s")
      :format(CLEAN_ENV, EMBER, script))
    assert.equal(1, status, out)
    assert.matches("rank 0 failed: exited with status 1", out)
    assert.matches("stopping the 2 workers still running %(SIGTERM%)", out)
    assert.is_nil(out:find("still alive", 1, true), out)
    assert.is_nil(out:find("rank 1 failed", 1, true), out)
  end)

  it("passes Ctrl-C on to the workers and exits non-zero", function()
    local script = temp_file([[
      io.stdout:setvbuf("line")
      print("ready " .. io.open("/proc/self/stat"):read("n") .. " ")
      require("ember").sleep(20)
    ]])
    local out, status = with_signals(2, "INT", ("%s %s launch -n 2 %s")
      :format(CLEAN_ENV, EMBER, script))
    assert.equal(130, status, out)
    assert.matches("got SIGINT: passing it on to 2 workers", out)
    assert.matches("interrupted by SIGINT", out)
    assert.is_nil(out:find("still alive", 1, true), out)
  end)

  it("starts ranks N..2N-1 of 2N as the second of two nodes", function()
    local script = temp_file(SHOW_ENV)
    local out, status = ember_launch("--nnodes 2 --node-rank 1 --master "
      .. "127.0.0.1:1234 -n 3 " .. script, nil, true)
    assert.equal(0, status, out)
    for rank = 3, 5 do
      assert.matches(("%%[rank %d%%] rank=%d local=%d world=6 "
        .. "master=127%%.0%%.0%%.1:1234 "):format(rank, rank, rank - 3), out)
    end
    assert.equal(3, #lines_of(out))
  end)

  it("takes the node rank and count from Slurm", function()
    local script = temp_file(SHOW_ENV)
    local out, status = ember_launch("-n 2 " .. script, "SLURM_PROCID=1 "
      .. "SLURM_NTASKS=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=4321")
    assert.equal(0, status, out)
    assert.matches("%[rank 2%] rank=2 local=0 world=4 master=127%.0%.0%.1:4321", out)
    assert.matches("%[rank 3%] rank=3 local=1 world=4 master=127%.0%.0%.1:4321", out)
    assert.matches("node 1 of 2 %(from Slurm%), ranks 2 to 3 of 4", out)
  end)

  it("rejects bad options with status 2 and the usage", function()
    local script = temp_file("")
    local cases = {
      { script, "missing %-n N" },
      { "-n abc " .. script, "%-n needs a whole number >= 1, not 'abc'" },
      { "-n 0 " .. script, "%-n needs a whole number >= 1, not '0'" },
      { "-n 2 --nnodes 2 --node-rank 2 --master h:1 " .. script,
        "%-%-node%-rank 2 is not below %-%-nnodes 2" },
      { "-n 2 --master localhost " .. script, "%-%-master needs HOST:PORT" },
      { "-n 2 --nnodes 2 " .. script, "%-%-master HOST:PORT is needed" },
      { "-n 2", "missing SCRIPT" },
      { "-n 2 /nonexistent/script.lua", "cannot find the script" },
      { "--frob " .. script, "unknown option '%-%-frob'" },
    }
    for _, case in ipairs(cases) do
      local out, status = ember_launch(case[1])
      assert.equal(2, status, case[1] .. "\n" .. out)
      assert.matches("ember launch: " .. case[2], out)
      assert.matches("usage: ember launch %[options%] SCRIPT", out)
    end
  end)

  it("explains its options with --help", function()
    local out, status = ember_launch("--help")
    assert.equal(0, status)
    for _, option in ipairs({ "--nproc-per-node", "--nnodes", "--node-rank",
      "--master", "--grace", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK" }) do
      assert.truthy(out:find(option, 1, true), option)
    end
  end)
end)

describe("ember.core.launch", function()
  -- Runs a Lua chunk in `ember run`, which has ember.core built in.
  local function ember_run(source, env)
    local script = temp_file(source)
    return sh(("%s %s %s run %s"):format(CLEAN_ENV, env or "", EMBER, script))
  end

  it("gives workers the launcher's environment plus their own", function()
    local out, status = ember_run([[
      local core = require "ember.core"
      print(core.launch{argv = {"sh", "-c", 'echo "$FOO $BAR $KEPT"'},
        workers = {{env = {FOO = "mine", BAR = 7}, label = "w"}, {}}})
    ]], "FOO=parent KEPT=kept")
    assert.equal(0, status, out)
    assert.matches("%[w%] mine 7 kept\n", out)
    assert.matches("%[worker 1%] parent  kept\n", out)
    assert.matches("0\tnil\n", out)
  end)

  it("does not let workers inherit the launcher's files", function()
    local out, status = ember_run([[
      local core = require "ember.core"
      local kept = assert(io.open(arg[0]))
      core.launch{argv = {"sh", "-c", "ls /proc/$$/fd"}, workers = {{}, {}}}
      kept:close()
    ]])
    assert.equal(0, status, out)
    for worker = 0, 1 do
      local fds = {}
      for fd in out:gmatch("%[worker " .. worker .. "%] (%d+)") do
        fds[#fds + 1] = fd
      end
      assert.same({ "0", "1", "2" }, fds)
    end
  end)

  it("sends SIGKILL to a worker that ignores SIGTERM", function()
    local out, status = ember_run([[
      local core = require "ember.core"
      print("result", core.launch{
        argv = {"sh", "-c", "trap '' TERM; [ $R = 0 ] && exit 4; exec sleep 20"},
        workers = {{env = {R = 0}, label = "a"}, {env = {R = 1}, label = "b"}},
        grace = 0.1, kill_after = 0.2})
    ]])
    assert.equal(0, status, out)
    assert.matches("result\t4\ta failed: exited with status 4", out)
    assert.matches("stopping the 1 worker still running %(SIGTERM%)", out)
    assert.matches("sending SIGKILL to 1 worker", out)
  end)

  it("kills on a second Ctrl-C", function()
    local script = temp_file([[
      local core = require "ember.core"
      local status = core.launch{argv = {"sh", "-c",
        "trap '' INT; echo \" ready $$ \"; exec sleep 20"}, workers = {{}, {}}}
      os.exit(status)
    ]])
    local out, status = with_signals(2, "INT INT", ("%s %s run %s")
      :format(CLEAN_ENV, EMBER, script))
    assert.equal(130, status, out)
    assert.matches("got SIGINT: passing it on to 2 workers", out)
    assert.matches("SIGINT again; sending SIGKILL to 2 workers", out)
    assert.is_nil(out:find("still alive", 1, true), out)
  end)

  it("raises ENOENT for a program that does not exist", function()
    local out, status = ember_run([[
      local core = require "ember.core"
      local ok, err = pcall(core.launch, {argv = {"/nonexistent/program"},
        workers = {{label = "rank 0"}}})
      print(ok, err.code, err.message)
    ]])
    assert.equal(0, status, out)
    assert.matches("false\tENOENT\tcannot start '/nonexistent/program' for "
      .. "rank 0: no such file or directory", out)
  end)

  it("checks its arguments", function()
    local out = ember_run([[
      local core = require "ember.core"
      for _, opts in ipairs({
        {argv = {}, workers = {{}}},
        {argv = {"true"}, workers = {}},
        {argv = {"true"}, workers = {{env = {"x"}}}},
        {argv = {"true"}, workers = {{env = {["A=B"] = "x"}}}},
        {argv = {"true"}, workers = {{}}, grace = -1},
      }) do
        print(select(2, pcall(core.launch, opts)))
      end
    ]])
    assert.matches("argv must be a non%-empty list", out)
    assert.matches("workers must be a non%-empty list", out)
    assert.matches("name that is not a string", out)
    assert.matches("bad name 'A=B'", out)
    assert.matches("grace must be a number of seconds", out)
  end)

  it("finds free ports and its own executable", function()
    local out, status = ember_run([[
      local core = require "ember.core"
      print("port", core.free_port(), core.free_port("127.0.0.1"))
      print("exe", core.executable_path())
      print("bad", pcall(core.free_port, "no.such.host.invalid"))
    ]])
    assert.equal(0, status, out)
    local a, b = out:match("port\t(%d+)\t(%d+)")
    assert.truthy(tonumber(a) > 0 and tonumber(b) > 0, out)
    assert.matches("exe\t/.*ember\n", out)
    assert.matches("bad\tfalse\tcannot resolve 'no.such.host.invalid'", out)
  end)
end)
