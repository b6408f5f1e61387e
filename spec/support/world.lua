-- Worlds of `ember run` workers for the multi-process specs: each worker runs
-- a fixture script with a CASE on a free port, bounded in time, and prints
-- "RESULT key value" lines that the spec reads.
local core = require "ember.core"

local world = {}

local EMBER = os.getenv("EMBER_BIN") or "ember"

-- A port that is free now, below the kernel's ephemeral range (32768 and
-- up): a port the kernel hands out for "any free port" can be taken again by
-- the next outgoing connection before the world binds it (EADDRINUSE).
local LOW_PORTS, LOW_PORTS_END = 20000, 32000
math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)") or "0", 16))

local function free_port()
  for _ = 1, 100 do
    local port = math.random(LOW_PORTS, LOW_PORTS_END - 1)
    local ok, server = pcall(core.store_serve, "127.0.0.1", port)
    if ok then
      server:close()
      return port
    end
  end
  local server = core.store_serve("127.0.0.1", 0)
  local port = server:port()
  server:close()
  return port
end

local function read_file(path)
  local f = io.open(path, "rb")
  if f == nil then return "" end
  local text = f:read("a")
  f:close()
  return text
end

-- Runs `n` workers of `case` (`ember run opts.worker CASE`); returns a list
-- (by rank, 0-based) of {status=, output=, results={key=value}}.
function world.run(case, n, opts)
  opts = opts or {}
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. dir))
  local port = free_port()
  local lines = {}
  for rank = 0, n - 1 do
    local env = ("RANK=%d WORLD_SIZE=%d MASTER_ADDR=127.0.0.1 MASTER_PORT=%d %s"):format(
      rank, n, port, opts.env and opts.env(rank) or "")
    lines[#lines + 1] = ("(env %s timeout %d %s run %s %s >%s/out.%d 2>&1; echo $? >%s/rc.%d) &"):format(
      env, opts.timeout or 60, EMBER, opts.worker, case, dir, rank, dir, rank)
  end
  lines[#lines + 1] = "wait"
  assert(os.execute(table.concat(lines, "\n")))
  local workers = {}
  for rank = 0, n - 1 do
    local output = read_file(("%s/out.%d"):format(dir, rank))
    local results = {}
    for key, value in output:gmatch("RESULT (%S+) ([^\n]*)") do
      results[key] = value
    end
    workers[rank] = {
      status = tonumber(read_file(("%s/rc.%d"):format(dir, rank))),
      output = output, results = results,
    }
  end
  os.execute("rm -rf " .. dir)
  return workers
end

function world.describe(workers)
  local parts = {}
  for rank = 0, #workers do
    parts[#parts + 1] = ("--- rank %d (status %s)\n%s"):format(rank,
      tostring(workers[rank].status), workers[rank].output)
  end
  return table.concat(parts, "\n")
end

function world.assert_all_ok(workers)
  for rank = 0, #workers do
    assert(workers[rank].status == 0, world.describe(workers))
    assert(workers[rank].results.done == tostring(rank), world.describe(workers))
  end
end

world.free_port = free_port
world.read_file = read_file

return world
