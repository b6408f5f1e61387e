-- Several hosts: three network namespaces joined through a bridge, one
-- `ember launch --nnodes 3` in each, running the batch CartPole example
-- together. Needs root and `ip netns` (spec/support/netns.lua); pending with
-- the reason otherwise. Addresses are 10.213.0.1-3 inside the namespaces
-- only; nothing is sent outside them.
local netns = require "spec.support.netns"
local quote = netns.quote

local function absolute(path)
  if path:sub(1, 1) == "/" then return path end
  local pipe = assert(io.popen("pwd"))
  local dir = pipe:read("l")
  pipe:close()
  return dir .. "/" .. path
end

local EMBER = absolute(os.getenv("EMBER_BIN") or "build/bin/ember")
local SCRIPT = "spec/fixtures/hosts/cartpole.lua"
local EXAMPLE_ARGS = "--batch --num-episode 3 --num-steps 20 --device cpu"
local NODES, PER_NODE = 3, 2
local MASTER_PORT = 29500   -- free: the namespaces are new
local TIMEOUT = 120         -- seconds for the whole world

-- The launchers must not pick up a real scheduler's or world's variables.
local CLEAN_ENV = "env -u SLURM_PROCID -u SLURM_NTASKS -u SLURM_LOCALID"
  .. " -u SLURM_JOB_NODELIST -u SLURM_STEP_NODELIST -u SLURM_NODELIST"
  .. " -u OMPI_COMM_WORLD_RANK -u OMPI_COMM_WORLD_SIZE"
  .. " -u OMPI_COMM_WORLD_LOCAL_RANK -u MASTER_ADDR -u MASTER_PORT"
  .. " -u RANK -u WORLD_SIZE -u LOCAL_RANK -u EMBER_HOST -u EMBER_LISTEN"

local function read_file(path)
  local f = io.open(path, "rb")
  if f == nil then return "" end
  local text = f:read("a")
  f:close()
  return text
end

local function shell(command)
  local pipe = assert(io.popen(command .. " 2>&1"))
  local output = pipe:read("a")
  local _, _, status = pipe:close()
  return output, status
end

local function random_secret()
  local f = assert(io.open("/dev/urandom", "rb"))
  local bytes = f:read(16)
  f:close()
  return (bytes:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

-- Whether this ember's launcher takes --listen ADDR (workers then listen on
-- loopback only unless told otherwise, or given a secret).
local function launch_takes_listen()
  local help = shell(EMBER .. " launch --help")
  return help:find("--listen", 1, true) ~= nil
end

-- The command starting node `node` (0-based) of the world inside its
-- namespace: the one place the launch command line is written.
-- `o` has secret= (EMBER_SECRET for every worker) and listen= (pass
-- --listen with the node's own address).
local function launch_command(net, node, o)
  local options = {
    "--nnodes", NODES, "--node-rank", node, "-n", PER_NODE,
    "--master", ("%s:%d"):format(net:address(1), MASTER_PORT),
  }
  if o.listen then
    options[#options + 1] = "--listen"
    options[#options + 1] = net:address(node + 1)
  end
  local command = ("%s EMBER_SECRET=%s timeout -k 5 %d %s launch %s %s %s")
    :format(CLEAN_ENV, quote(o.secret), TIMEOUT, quote(EMBER),
      table.concat(options, " "), SCRIPT, EXAMPLE_ARGS)
  return net:exec(node + 1, command)
end

-- Starts every node's launcher at once, each writing its output to a file;
-- returns when all have ended: a list (by node, 0-based) of
-- {status=, output=}.
local function run_world(net, o)
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. quote(dir)))
  local lines = {}
  for node = 0, NODES - 1 do
    lines[#lines + 1] = ("(%s </dev/null >%s/out.%d 2>&1; echo $? >%s/rc.%d) &")
      :format(launch_command(net, node, o), dir, node, dir, node)
  end
  lines[#lines + 1] = "wait"
  os.execute(table.concat(lines, "\n"))
  local nodes = {}
  for node = 0, NODES - 1 do
    nodes[node] = {
      status = tonumber(read_file(("%s/rc.%d"):format(dir, node))),
      output = read_file(("%s/out.%d"):format(dir, node)),
    }
  end
  os.execute("rm -rf " .. quote(dir))
  return nodes
end

local function describe_world(nodes)
  local parts = {}
  for node = 0, NODES - 1 do
    parts[#parts + 1] = ("--- node %d (status %s)\n%s"):format(node,
      tostring(nodes[node].status), nodes[node].output)
  end
  return table.concat(parts, "\n")
end

-- Whether namespaces can be made here; marks the test pending if not.
local function namespaces_or_pending()
  local ok, reason = netns.available()
  if not ok then pending(reason) end
  return ok
end

describe("several hosts (network namespaces)", function()
  it("removes its namespaces also when the test fails", function()
    if not namespaces_or_pending() then return end
    local names
    local ok, err = pcall(netns.with, 2, function(net)
      names = { net.hub, net.names[1], net.names[2] }
      for _, name in ipairs(names) do
        assert.is_true(netns.exists(name), name)
      end
      error("failing on purpose")
    end)
    assert.is_false(ok)
    assert.matches("failing on purpose", tostring(err))
    for _, name in ipairs(names) do
      assert.is_false(netns.exists(name), name)
    end
  end)

  it("link_down cuts a node off without a reset, link_up joins it again",
    function()
      if not namespaces_or_pending() then return end
      netns.with(2, function(net)
        -- Nothing listens on node 2's port 9: a connection is refused
        -- (RST) while the link is up and gets no answer while it is down.
        local connect = ("LC_ALL=C timeout 2 bash -c 'echo >/dev/tcp/%s/9'")
          :format(net:address(2))
        local ok, output = net:run(1, connect)
        assert.is_false(ok)
        assert.matches("refused", output)
        net:link_down(2)
        local out, status = shell(net:exec(1, connect))
        assert.equal(124, status, out)   -- timed out: no RST came back
        net:link_up(2)
        ok, output = net:run(1, connect)
        assert.is_false(ok)
        assert.matches("refused", output)
      end)
    end)

  it("runs the batch CartPole example on three nodes with launch --nnodes 3",
    function()
      if not namespaces_or_pending() then return end
      local listen = launch_takes_listen()
      netns.with(NODES, function(net)
        local nodes = run_world(net, { secret = random_secret(),
          listen = listen })
        local all = describe_world(nodes)
        for node = 0, NODES - 1 do
          assert.equal(0, nodes[node].status, all)
          local out = nodes[node].output
          local first, last = node * PER_NODE, (node + 1) * PER_NODE - 1
          assert.matches(("node %d of %d, ranks %d to %d of %d, master %s:%d")
            :format(node, NODES, first, last, NODES * PER_NODE,
              net:address(1), MASTER_PORT), out, 1, true)
          -- Each worker joined at its own node's address.
          for rank = first, last do
            local name = rank == 0 and "agent" or "observer_" .. rank
            assert.matches(("[rank %d] joined as %s at %s:"):format(rank,
              name, net:address(node + 1)), out, 1, true)
          end
          -- No error, warning or leak report; rank 0 only announces the
          -- listen rule.
          if node == 0 then
            assert.matches("ember: peers must prove EMBER_SECRET", out, 1, true)
          end
          assert.not_matches("ember: [^p]", out)
          assert.not_matches("warning", out, 1, true)
          assert.not_matches("leak", out)
        end
        local agent = nodes[0].output
        for episode = 0, 2 do
          assert.matches(("[rank 0] Episode %d\t"):format(episode), agent, 1,
            true)
        end
        assert.matches(("%%[rank 0%%] 3 episodes of 20 steps, %d observers, " ..
          "batch: [%%d.]+ s\n"):format(NODES * PER_NODE - 1), agent)
      end)
    end)
end)
