-- Network namespaces for the multi-host specs: N namespaces ("nodes"), each
-- with an interface eth0 at 10.213.0.I/24 whose veth peer is a port of a
-- bridge in one more namespace (the "hub"). Nothing is made in the caller's
-- own namespace, so deleting the namespaces removes every interface too.
-- Needs root and `ip netns`; available() says why not otherwise.
--
--   local net = netns.create(3)
--   os.execute(net:exec(1, "ember launch ..."))  -- runs inside node 1
--   net:link_down(2); net:link_up(2)              -- cut node 2 off silently
--   net:destroy()
--
-- or netns.with(3, function(net) ... end), which destroys them even when the
-- function fails.
local netns = {}

local SUBNET = "10.213.0."
local PREFIX = "embertest-"

-- A shell word holding `text` as it is.
local function quote(text)
  return "'" .. tostring(text):gsub("'", "'\\''") .. "'"
end
netns.quote = quote

-- The ASan run of the specs preloads libasan into every command, and its leak
-- check fails `ip` itself; commands here run without the preload (an ember
-- built with ASan links the runtime on its own).
local NO_PRELOAD = "env -u LD_PRELOAD "

-- Runs a command; returns whether it succeeded and its output (stderr too).
local function sh(command)
  local pipe = assert(io.popen(NO_PRELOAD .. command .. " 2>&1"))
  local output = pipe:read("a")
  local ok = pipe:close()
  return ok == true, output
end

local function ip(...)
  local words = {}
  for i, word in ipairs { ... } do words[i] = quote(word) end
  local ok, output = sh("ip " .. table.concat(words, " "))
  if not ok then
    error(("ip %s: %s"):format(table.concat({ ... }, " "),
      output:gsub("%s+$", "")), 2)
  end
  return output
end

local function own_pid()
  local f = assert(io.open("/proc/self/stat"))
  local pid = f:read("l"):match("^(%d+)")
  f:close()
  return pid
end

local function process_exists(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if f == nil then return false end
  f:close()
  return true
end

local function namespace_names()
  local _, output = sh("ip netns list")
  local names = {}
  for name in output:gmatch("(%S+)[^\n]*\n") do names[#names + 1] = name end
  return names
end

-- Kills what still runs inside namespace `name` (processes a spec started
-- there), then deletes it; its interfaces and their veth peers go with it.
local function delete_namespace(name)
  local _, pids = sh("ip netns pids " .. quote(name))
  for pid in pids:gmatch("%d+") do
    os.execute("kill -9 " .. pid .. " 2>/dev/null")
  end
  sh("ip netns del " .. quote(name))
end

-- Deletes the namespaces of earlier runs whose process is gone (a run killed
-- before it could clean up); those of live runs are left alone.
local function delete_stale()
  for _, name in ipairs(namespace_names()) do
    local pid = name:match("^" .. PREFIX:gsub("%-", "%%-") .. "(%d+)%-")
    if pid and not process_exists(pid) then delete_namespace(name) end
  end
end

-- true, or false and why the namespaces cannot be made here.
function netns.available()
  local ok, uid = sh("id -u")
  if not ok or uid:match("^%s*(%d+)") ~= "0" then
    return false, "needs root (ip netns)"
  end
  local probe = ("%s%s-probe"):format(PREFIX, own_pid())
  local made, output = sh("ip netns add " .. quote(probe))
  if not made then
    return false, "ip netns add fails: " .. output:gsub("%s+$", "")
  end
  delete_namespace(probe)
  return true
end

local Net = {}
Net.__index = Net

local serial = 0

-- Makes `n` namespaces joined through the hub's bridge; raises (after
-- removing what it made) when one step fails.
function netns.create(n)
  assert(n >= 1 and n <= 250, "netns.create: 1 to 250 namespaces")
  delete_stale()
  serial = serial + 1
  local base = ("%s%s-%d-"):format(PREFIX, own_pid(), serial)
  local net = setmetatable({ n = n, hub = base .. "hub", names = {} }, Net)
  for i = 1, n do net.names[i] = base .. i end
  local ok, err = pcall(function()
    ip("netns", "add", net.hub)
    ip("-n", net.hub, "link", "set", "lo", "up")
    ip("-n", net.hub, "link", "add", "br0", "type", "bridge")
    ip("-n", net.hub, "link", "set", "br0", "up")
    for i = 1, n do net:add_node(i) end
  end)
  if not ok then
    net:destroy()
    error(err, 2)
  end
  return net
end

-- Node i: its namespace, with lo up and eth0 wired to port p<i> of the hub.
function Net:add_node(i)
  local name = self.names[i]
  ip("netns", "add", name)
  ip("-n", name, "link", "set", "lo", "up")
  ip("-n", self.hub, "link", "add", "p" .. i, "type", "veth",
    "peer", "name", "eth0", "netns", name)
  ip("-n", self.hub, "link", "set", "p" .. i, "master", "br0", "up")
  ip("-n", name, "addr", "add", self:address(i) .. "/24", "dev", "eth0")
  ip("-n", name, "link", "set", "eth0", "up")
end

-- Node i's address (10.213.0.i).
function Net:address(i)
  return SUBNET .. i
end

-- The shell command running `command` (a shell command line) inside node i.
function Net:exec(i, command)
  return ("%sip netns exec %s sh -c %s"):format(NO_PRELOAD,
    quote(self.names[i]), quote(command))
end

-- Runs `command` inside node i; returns whether it succeeded and its output.
function Net:run(i, command)
  return sh(self:exec(i, command))
end

-- Cuts node i off silently: its port on the bridge goes down, so what it
-- sends and what is sent to it vanishes, with no RST and no ICMP error.
function Net:link_down(i)
  ip("-n", self.hub, "link", "set", "p" .. i, "down")
end

function Net:link_up(i)
  ip("-n", self.hub, "link", "set", "p" .. i, "up")
end

-- Removes the namespaces, their interfaces, and what still runs in them.
-- Safe to call more than once.
function Net:destroy()
  for i = 1, self.n do delete_namespace(self.names[i]) end
  delete_namespace(self.hub)
end

-- Whether a namespace called `name` exists.
function netns.exists(name)
  for _, listed in ipairs(namespace_names()) do
    if listed == name then return true end
  end
  return false
end

-- Runs fn(net) with `n` fresh namespaces and destroys them afterwards, also
-- when fn raises (the error is raised again).
function netns.with(n, fn)
  local net = netns.create(n)
  local ok, err = xpcall(fn, debug.traceback, net)
  net:destroy()
  if not ok then error(err, 0) end
end

return netns
