-- `ember launch`: starts this node's workers, each as `ember run SCRIPT ARGS`
-- with RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set (what
-- ember.rpc.init_rpc reads), and EMBER_LAUNCHED=1. Parsing and planning are
-- plain functions of the arguments and the environment, so specs can try
-- them without starting anything; core.launch does the starting.
local launch = {}

launch.USAGE = [[
usage: ember launch [options] SCRIPT [ARGS]

Starts workers that each run `ember run SCRIPT ARGS`, with RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT set for ember.rpc.init_rpc. Their
output lines come prefixed with "[rank R] ".

options:
  -n, --nproc-per-node N  workers to start on this node (under Slurm or
                          Open MPI the default is 1)
  --nnodes M              nodes taking part, one launcher each (default 1)
  --node-rank K           this node's number, 0 to M-1 (default 0); its
                          workers get ranks K*N to K*N+N-1 of N*M
  --master HOST:PORT      where rank 0 listens; default 127.0.0.1 and a free
                          port when there is one node; needed with more
                          (or MASTER_ADDR and MASTER_PORT in the environment)
  --listen ADDR           the address workers accept connections on when
                          there is no EMBER_SECRET (sets EMBER_LISTEN);
                          without it they accept only loopback peers
  --grace SECONDS         when a worker fails, how long the others may run
                          before they are stopped (default 10)
  -h, --help              show this help

Under Slurm (SLURM_PROCID, SLURM_NTASKS) or Open MPI (OMPI_COMM_WORLD_RANK,
OMPI_COMM_WORLD_SIZE) each task is one launcher: --node-rank and --nnodes
default to the task's rank and the number of tasks, and under Slurm the
master defaults to the first host of the job on port 29500.

The exit status is 0 when every worker succeeds, else the first failed
worker's. Ctrl-C is passed on to the workers; a second one kills them.]]

local SHORT_USAGE = "usage: ember launch [options] SCRIPT [ARGS]\n"
  .. "run 'ember launch --help' for the options\n"

local DEFAULT_MASTER_PORT = 29500

-- Option spellings (torchrun's underscores too) -> field of the options.
local OPTION_FIELDS = {
  ["-n"] = "nproc", ["--nproc-per-node"] = "nproc",
  ["--nproc_per_node"] = "nproc",
  ["--nnodes"] = "nnodes",
  ["--node-rank"] = "node_rank", ["--node_rank"] = "node_rank",
  ["--master"] = "master",
  ["--grace"] = "grace",
  ["--listen"] = "listen",
}

-- Scheduler environments in which one launcher runs per task.
local SCHEDULERS = {
  { name = "Slurm", rank = "SLURM_PROCID", size = "SLURM_NTASKS",
    local_rank = "SLURM_LOCALID" },
  { name = "Open MPI", rank = "OMPI_COMM_WORLD_RANK",
    size = "OMPI_COMM_WORLD_SIZE", local_rank = "OMPI_COMM_WORLD_LOCAL_RANK" },
}

local function whole_number(text)
  if type(text) ~= "string" or not text:match("^%s*%d+%s*$") then
    return nil
  end
  return math.tointeger(tonumber(text))
end

local function parse_port(text)
  local port = whole_number(text)
  if port == nil or port < 1 or port > 65535 then return nil end
  return port
end

-- "HOST:PORT" or "[IPv6]:PORT" -> host, port; nil when malformed.
function launch.parse_address(text)
  local host, port = text:match("^%[([^%]]+)%]:(%d+)$")
  if host == nil then host, port = text:match("^([^:%[%]]+):(%d+)$") end
  port = parse_port(port)
  if host == nil or port == nil then return nil end
  return host, port
end

-- Whether `text` can be an address to listen on (a name, IPv4 or IPv6
-- address: nothing a shell or a URL would read otherwise).
function launch.is_listen_address(text)
  return type(text) == "string" and text:match("^[%w%.:%-]+$") ~= nil
end

local CHECKS = {
  nproc = function(value)
    local n = whole_number(value)
    if n == nil or n < 1 then return nil, "a whole number >= 1" end
    return n
  end,
  nnodes = function(value)
    local n = whole_number(value)
    if n == nil or n < 1 then return nil, "a whole number >= 1" end
    return n
  end,
  node_rank = function(value)
    local n = whole_number(value)
    if n == nil then return nil, "a whole number >= 0" end
    return n
  end,
  grace = function(value)
    local seconds = tonumber(value)
    if seconds == nil or seconds ~= seconds or seconds < 0
        or seconds == math.huge then
      return nil, "a number of seconds >= 0"
    end
    return seconds
  end,
  listen = function(value)
    if not launch.is_listen_address(value) then
      return nil, "an address such as 0.0.0.0 or 10.0.0.5"
    end
    return value
  end,
  master = function(value)
    local host, port = launch.parse_address(value)
    if host == nil then return nil, "HOST:PORT with a port from 1 to 65535" end
    return { host = host, port = port }
  end,
}

-- "--name=value", "-n4", or the name alone (its value is the next argument).
local function split_option(arg)
  local name, value = arg:match("^(%-%-[^=]+)=(.*)$")
  if name then return name, value end
  if arg:match("^%-n.") then return "-n", arg:sub(3) end
  return arg, nil
end

-- Parses the command line: the options (script and args included), or nil
-- and a message.
function launch.parse(args)
  local opts = {}
  local i = 1
  while i <= #args do
    local arg = args[i]
    if arg == "-h" or arg == "--help" then
      opts.help = true
      return opts
    elseif arg == "--" then
      i = i + 1
      break
    elseif arg:sub(1, 1) ~= "-" or arg == "-" then
      break
    end
    local name, value = split_option(arg)
    local field = OPTION_FIELDS[name]
    if field == nil then return nil, ("unknown option '%s'"):format(arg) end
    if value == nil then
      i = i + 1
      value = args[i]
      if value == nil then return nil, ("%s needs a value"):format(name) end
    end
    local checked, wanted = CHECKS[field](value)
    if checked == nil then
      return nil, ("%s needs %s, not '%s'"):format(name, wanted, value)
    end
    opts[field] = checked
    i = i + 1
  end
  opts.script = args[i]
  opts.args = { table.unpack(args, i + 1) }
  return opts
end

-- The scheduler this launcher runs under, as {name, rank, size, local_rank},
-- or nil; or nil and a message when its variables are malformed.
local function detect_scheduler(getenv)
  for _, scheduler in ipairs(SCHEDULERS) do
    local rank_text, size_text = getenv(scheduler.rank), getenv(scheduler.size)
    if rank_text and size_text then
      local rank, size = whole_number(rank_text), whole_number(size_text)
      if rank == nil or size == nil or size < 1 or rank >= size then
        return nil, ("%s=%s and %s=%s do not make a rank and a size"):format(
          scheduler.rank, rank_text, scheduler.size, size_text)
      end
      return { name = scheduler.name, rank = rank, size = size,
               local_rank = whole_number(getenv(scheduler.local_rank)) }
    end
  end
  return false
end

-- The first host of a Slurm node list: "gpu[07-09,12],cpu1" -> "gpu07".
function launch.first_slurm_host(list)
  local first = list:match("^[^,%[]*%[[^%]]*%][^,]*") or list:match("^[^,]+")
  if first == nil then return nil end
  local prefix, range, suffix = first:match("^([^%[]*)%[([^%]]*)%](.*)$")
  if prefix == nil then return first end
  return prefix .. range:match("^[^,%-]*") .. suffix
end

-- Where rank 0 listens when there are several nodes and no --master.
local function master_from_environment(getenv, scheduler)
  local host = getenv("MASTER_ADDR")
  local port_text = getenv("MASTER_PORT")
  local port = DEFAULT_MASTER_PORT
  if port_text then
    port = parse_port(port_text)
    if port == nil then
      return nil, ("MASTER_PORT=%s is not a port"):format(port_text)
    end
  end
  if host == nil and scheduler and scheduler.name == "Slurm" then
    local list = getenv("SLURM_STEP_NODELIST") or getenv("SLURM_JOB_NODELIST")
      or getenv("SLURM_NODELIST")
    host = list and launch.first_slurm_host(list)
  end
  if host == nil or host == "" then
    return nil, "--master HOST:PORT is needed when there are several nodes"
      .. " (or MASTER_ADDR and MASTER_PORT in the environment)"
  end
  return host, port
end

local function choose_master(opts, nnodes, system, scheduler)
  if opts.master then return opts.master.host, opts.master.port end
  if nnodes > 1 then
    return master_from_environment(system.getenv, scheduler)
  end
  local host = "127.0.0.1"
  return host, system.free_port(host)
end

local function worker_list(plan, local_base)
  local workers = {}
  for i = 0, plan.nproc - 1 do
    local rank = plan.node_rank * plan.nproc + i
    workers[i + 1] = {
      label = "rank " .. rank,
      env = {
        RANK = tostring(rank),
        LOCAL_RANK = tostring(local_base + i),
        WORLD_SIZE = tostring(plan.world_size),
        MASTER_ADDR = plan.master_addr,
        MASTER_PORT = tostring(plan.master_port),
        EMBER_LAUNCHED = "1",
        EMBER_LISTEN = plan.listen,
      },
    }
  end
  return workers
end

local function check_script(script, exists)
  if script == nil then return nil, "missing SCRIPT" end
  if script == "-" then
    return nil, "SCRIPT cannot be '-': each worker needs to read it"
  end
  if not exists(script) then
    return nil, ("cannot find the script '%s'"):format(script)
  end
  return true
end

-- What to start: {argv, workers, grace, nproc, nnodes, node_rank,
-- world_size, master_addr, master_port, scheduler}, or nil and a message.
-- `system` gives getenv(name), free_port(host), executable (the path of
-- ember itself) and exists(path).
function launch.plan(opts, system)
  local ok, err = check_script(opts.script, system.exists)
  if not ok then return nil, err end
  local scheduler
  scheduler, err = detect_scheduler(system.getenv)
  if scheduler == nil then return nil, err end
  local plan = {
    nnodes = opts.nnodes or (scheduler and scheduler.size) or 1,
    node_rank = opts.node_rank or (scheduler and scheduler.rank) or 0,
    nproc = opts.nproc or (scheduler and 1) or nil,
    grace = opts.grace,
    listen = opts.listen,
    scheduler = scheduler and scheduler.name or nil,
  }
  if plan.nproc == nil then
    return nil, "missing -n N, the number of workers to start"
  end
  if plan.node_rank >= plan.nnodes then
    return nil, ("--node-rank %d is not below --nnodes %d"):format(
      plan.node_rank, plan.nnodes)
  end
  plan.world_size = plan.nproc * plan.nnodes
  plan.master_addr, plan.master_port = choose_master(opts, plan.nnodes,
    system, scheduler)
  if plan.master_addr == nil then return nil, plan.master_port end
  -- Several tasks of one job may share a node: their local ranks follow on.
  local task_local = scheduler and opts.node_rank == nil
    and scheduler.local_rank or 0
  plan.workers = worker_list(plan, task_local * plan.nproc)
  plan.argv = { system.executable, "run", opts.script,
                table.unpack(opts.args or {}) }
  return plan
end

local function stderr(...)
  io.stderr:write(...)
  io.stderr:flush()
end

local function usage_error(message)
  stderr("ember launch: ", message, "\n", SHORT_USAGE)
  return 2
end

local function file_exists(path)
  local f = io.open(path, "r")
  if f == nil then return false end
  f:close()
  return true
end

local function describe_plan(plan)
  local first = plan.workers[1].env.RANK
  local last = plan.workers[#plan.workers].env.RANK
  stderr(("ember launch: node %d of %d%s, ranks %s to %s of %d, master %s:%d\n")
    :format(plan.node_rank, plan.nnodes,
      plan.scheduler and (" (from " .. plan.scheduler .. ")") or "",
      first, last, plan.world_size, plan.master_addr, plan.master_port))
end

-- `ember launch ARGS`; returns the exit status.
function launch.main(progname, args)
  local opts, err = launch.parse(args)
  if opts == nil then return usage_error(err) end
  if opts.help then
    print(launch.USAGE)
    return 0
  end
  local core = require "ember.core"
  local system = {
    getenv = os.getenv,
    free_port = core.free_port,
    executable = core.executable_path() or progname,
    exists = file_exists,
  }
  local ok, plan
  ok, plan, err = pcall(launch.plan, opts, system)
  if not ok then
    stderr("ember launch: ", tostring(plan), "\n")
    return 1
  end
  if plan == nil then return usage_error(err) end
  if plan.nnodes > 1 then describe_plan(plan) end
  local status, message
  ok, status, message = pcall(core.launch, plan)
  if not ok then
    stderr("ember launch: ", tostring(status), "\n")
    return 1
  end
  if status ~= 0 and message and message:match("^interrupted") then
    stderr("ember launch: ", message, "\n")
  end
  return status
end

return launch
