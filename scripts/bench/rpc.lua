-- RPC benchmark: `ember launch -n 2 scripts/bench/rpc.lua [--quick]`.
-- Rank 0 first measures raw loopback TCP with scripts/bench/tcp_baseline.c
-- (built as ember_tcp_baseline next to the ember executable), then calls
-- rank 1 and prints one JSON object per line, each next to its baseline:
--   rpc_round_trip   rpc_sync with a small argument: median and mean µs
--   rpc_async        calls/s with 20,000 calls in flight from one caller
--   rpc_tensor       GB/s for 1 MiB and 64 MiB float32 tensor arguments
--   rref_round_trip  rpc.remote + to_here, and a proxy call: median µs
--   rref_churn       RRefs made, dropped and deleted at the owner, per second
-- FIGURES.md has PyTorch 1.13's figures for the same work on this machine.
local ember = require "ember"
local rpc = ember.rpc
local T = ember.tensor
local core = require "ember.core"

local here = (arg and arg[0] or ""):match("^(.*/)") or "scripts/bench/"
local common = dofile(here .. "common.lua")
local quick = arg[1] == "--quick"
local now = ember.clock

-- What rank 1 runs for rank 0 (globals of the script: "__main__:...").
bench = {}
function bench.echo(x) return x end
function bench.size_of(t) return t:numel() end
local Box = { get = function(self) return self.v end }
Box.__index = Box
rpc.register_class("bench.Box", Box)
function bench.box(v) return setmetatable({ v = v }, Box) end
function bench.owned() return rpc.stats().rrefs.owners end

local function median(list)
  table.sort(list)
  return list[(#list + 1) // 2]
end

-- Runs the C baseline and returns its JSON lines keyed by what/bytes.
local function tcp_baseline()
  local exe = core.executable_path():match("^(.*/)") .. "ember_tcp_baseline"
  local pipe = assert(io.popen(exe .. (quick and " --quick" or ""), "r"))
  local lines = {}
  for line in pipe:lines() do
    local what = line:match('"what":"([^"]+)"')
    local bytes = line:match('"bytes":(%d+)')
    if what then lines[what .. (bytes and ("/" .. bytes) or "")] = line end
  end
  assert(pipe:close(), "ember_tcp_baseline failed")
  return lines
end

local function number_in(line, field)
  return tonumber(line and line:match('"' .. field .. '":([%d.e+-]+)'))
end

local function round_trips(n)
  local times = {}
  for _ = 1, 200 do rpc.rpc_sync("worker1", bench.echo, { 1 }) end
  local total = now()
  for i = 1, n do
    local start = now()
    rpc.rpc_sync("worker1", bench.echo, { i })
    times[i] = (now() - start) * 1e6
  end
  total = (now() - total) * 1e6 / n
  return median(times), total
end

local function async_rate(n)
  local list = {}
  local start = now()
  for i = 1, n do list[i] = rpc.rpc_async("worker1", bench.echo, { i }) end
  ember.futures.wait_all(list)
  return n / (now() - start)
end

local function tensor_rate(bytes, repeats)
  local t = T.rand(bytes // 4)
  -- Warm-up: the receiver's first payloads fault fresh memory in; later ones
  -- reuse freed blocks, as a training loop's do.
  for _ = 1, 4 do rpc.rpc_sync("worker1", bench.size_of, { t }) end
  local start = now()
  for _ = 1, repeats do rpc.rpc_sync("worker1", bench.size_of, { t }) end
  return bytes * repeats / (now() - start) / 1e9
end

local function rref_round_trips(n)
  local make, proxy = {}, {}
  for i = 1, n do
    local start = now()
    local r = rpc.remote("worker1", bench.box, { i })
    r:to_here()
    make[i] = (now() - start) * 1e6
    start = now()
    r:rpc_sync():get()
    proxy[i] = (now() - start) * 1e6
  end
  return median(make), median(proxy)
end

-- Makes n RRefs, drops them, and waits until the owner holds none.
local function rref_churn(n)
  local start = now()
  local list = {}
  for i = 1, n do list[i] = rpc.remote("worker1", bench.box, { i }) end
  list[n]:to_here()
  list = nil
  collectgarbage()
  collectgarbage()
  while rpc.rpc_sync("worker1", bench.owned) > 0 do ember.sleep(0.001) end
  return n / (now() - start)
end

local function main()
  local rank = tonumber(os.getenv("RANK"))
  local baseline = rank == 0 and tcp_baseline() or nil
  rpc.init_rpc("worker" .. rank)
  if rank == 0 then
    local rt = baseline.round_trip_us
    local raw_rt = number_in(rt, "median")
    local med, mean = round_trips(quick and 2000 or 20000)
    common.emit("rpc_round_trip", { median_us = med, mean_us = mean,
      tcp_median_us = raw_rt, ratio_to_tcp = med / raw_rt,
      pytorch_us = 202, pytorch_ratio_to_tcp = 2.6 })

    local rates = {}
    for i = 1, quick and 1 or 5 do rates[i] = async_rate(20000) end
    local rate = median(rates)
    local raw_msgs = number_in(baseline["pipelined_msgs_per_s/32"], "value")
    common.emit("rpc_async", { in_flight = 20000, calls_per_s = rate,
      best_calls_per_s = math.max(table.unpack(rates)),
      tcp_pipelined_msgs_per_s = raw_msgs, pytorch_calls_per_s = 12300,
      ratio_to_pytorch = rate / 12300 })

    for _, case in ipairs { { 1 << 20, quick and 16 or 256, 0.88 },
                            { 64 << 20, quick and 2 or 8, 1.82 } } do
      local bytes, repeats, pytorch = case[1], case[2], case[3]
      local gbps = tensor_rate(bytes, repeats)
      local raw = number_in(baseline["bulk_gbps/" .. bytes], "gbps")
      common.emit("rpc_tensor", { bytes = bytes, repeats = repeats,
        gbps = gbps, tcp_gbps = raw, ratio_to_tcp = raw and gbps / raw,
        pytorch_gbps = pytorch })
    end
    local make_us, proxy_us = rref_round_trips(quick and 500 or 5000)
    common.emit("rref_round_trip", { remote_to_here_median_us = make_us,
      proxy_median_us = proxy_us })
    local churn = rref_churn(quick and 2000 or 20000)
    common.emit("rref_churn", { rrefs_per_s = churn })
    common.emit("rpc_memory", { rss_bytes = common.rss_bytes() })
  end
  rpc.shutdown()
end

main()
