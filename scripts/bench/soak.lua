-- Load and soak benchmark:
--   ember launch -n 8 scripts/bench/soak.lua [options]
-- Part 1, mixed calls: the workers make --calls calls in all (each its share)
-- to random peers, --window at a time each: small-argument calls, a share of
-- tensor calls (1 MiB float32), and a share of RRef creations (rpc.remote,
-- to_here, then dropped so that their deletions flow). Every answer is
-- checked. A warm-up of the same mix comes first. RSS is read at two quiet
-- moments (every worker idle, its garbage collected): after the warm-up and
-- at the end; the RRef counts must come back to where they started.
-- Part 2, pending async execution: ranks 1.. send --pending requests in all
-- to rank 0, whose async_execution function holds every one of them until
-- the last has arrived, then answers them all together.
-- Rank 0 prints one JSON object a line:
--   soak.worker  per worker: its calls, failures, latency, RSS after the
--                warm-up and at the end, RRef counts back to the start
--   soak.calls   the world: calls/s, p50/p99/max latency (all calls and by
--                kind), the largest RSS growth of a worker and rss_ok
--                (within 10%), rrefs_ok (no RRef left anywhere), idle_ok
--                (no call or RRef message pending anywhere)
--   soak.async   seconds until rank 0 held all the requests, its RSS then,
--                seconds until every sender had its answers, and how many
--                were answered correctly
-- Progress lines go to stderr. Latencies are binned in 1% steps (a
-- percentile is the middle of its bin); max is exact.
--
-- RSS and glibc: a received tensor's storage is malloc'ed (1 MiB). Left to
-- itself glibc raises its mmap threshold past 1 MiB after the first such
-- block is freed, so later ones come from the heap, and freed blocks in its
-- middle stay resident: start and end readings then differ by +-20% with no
-- leak. The ember executable fixes the threshold at 256 KiB (core/main.c),
-- so every such block has its own mapping and the readings stay steady.
-- soak.calls says whether the environment overrode it (mmap_threshold_set).
local ember = require "ember"
local rpc, T, futures = ember.rpc, ember.tensor, ember.futures
local core = require "ember.core"

local here = (arg and arg[0] or ""):match("^(.*/)") or "scripts/bench/"
local common = dofile(here .. "common.lua")
local now = ember.clock

local opts = ember.options.parse(arg, {
  usage = "ember launch -n 8 scripts/bench/soak.lua [options]",
  about = "Mixed calls (small arguments, tensors, RRefs) between all the " ..
    "workers, with\nlatency, throughput and memory over the run; then " ..
    "thousands of async-execution\nrequests pending at once on rank 0.",
  { "calls", nil, "calls in all, shared among the workers (default " ..
    "1000000; 20000 with --quick)", kind = "integer", min = 1 },
  { "tensor_share", 0.01, "share of the calls that send a tensor", min = 0 },
  { "rref_share", 0.05, "share of the calls that make an RRef, fetch it " ..
    "and drop it", min = 0 },
  { "tensor_bytes", 1 << 20, "bytes of each tensor sent (float32)", min = 4 },
  { "window", 16, "calls in flight per worker", min = 1 },
  { "warmup", nil, "calls per worker before the first RSS reading " ..
    "(default 3000; 300 with --quick)", kind = "integer", min = 0 },
  { "pending", nil, "async-execution requests pending at once on rank 0, " ..
    "0 for none (default 10000; 1000 with --quick)", kind = "integer",
    min = 0 },
  { "timeout", 300.0, "seconds any one call may take (barriers and held " ..
    "requests included)", min = 1 },
  { "progress", 10.0, "seconds between progress lines on stderr, 0 for none",
    min = 0 },
  { "seed", 1, "random seed (each worker adds its rank)" },
  { "quick", false, "a smoke test: 20,000 calls and 1,000 pending requests" },
})
opts.calls = opts.calls or (opts.quick and 20000 or 1000000)
opts.warmup = opts.warmup or (opts.quick and 300 or 3000)
opts.pending = opts.pending or (opts.quick and 1000 or 10000)
if opts.tensor_share + opts.rref_share > 1 then
  io.stderr:write("soak: --tensor-share and --rref-share add up to more " ..
    "than 1\n")
  os.exit(2)
end

local RANK = tonumber(os.getenv("RANK"))
local WORLD = tonumber(os.getenv("WORLD_SIZE"))
if RANK == nil or WORLD == nil or WORLD < 2 then
  io.stderr:write("soak: needs 2 workers or more, started by ember launch: " ..
    "ember launch -n 8 scripts/bench/soak.lua\n")
  os.exit(2)
end
local CALL_OPTS = { timeout = opts.timeout }
local MAX_RSS_GROWTH_PCT = 10

-- Rank 0 speaks for the world on stderr.
local function progress(fmt, ...)
  if RANK == 0 and opts.progress > 0 then
    io.stderr:write(("soak[rank %d]: " .. fmt .. "\n"):format(RANK, ...))
    io.stderr:flush()
  end
end

local function rss() return common.status_bytes("VmRSS") end

-- RSS once the collector has run: without it, a reading counts whatever
-- garbage (received tensors, 1 MiB each) the collector has not reached yet.
local function settled_rss()
  collectgarbage()
  collectgarbage()
  return rss(), collectgarbage("count")
end

-- --- Latency histograms ------------------------------------------------------

local STEP = math.log(1.01)

local function new_histogram() return { count = 0, max_us = 0, bins = {} } end

local function record(h, seconds)
  local us = seconds * 1e6
  local bin = us <= 1 and 0 or math.floor(math.log(us) / STEP)
  h.bins[bin] = (h.bins[bin] or 0) + 1
  h.count = h.count + 1
  if us > h.max_us then h.max_us = us end
end

-- A histogram that travels: its bins as a flat list {bin, count, ...}.
local function packed(h)
  local flat = {}
  for bin, count in pairs(h.bins) do
    flat[#flat + 1] = bin
    flat[#flat + 1] = count
  end
  return { count = h.count, max_us = h.max_us, flat = flat }
end

local function merge(into, p)
  into.count = into.count + p.count
  into.max_us = math.max(into.max_us, p.max_us)
  for i = 1, #p.flat, 2 do
    local bin = p.flat[i]
    into.bins[bin] = (into.bins[bin] or 0) + p.flat[i + 1]
  end
end

-- The p-th quantile (0 < p <= 1) in µs, nil without samples.
local function quantile(h, p)
  if h.count == 0 then return nil end
  local bins = {}
  for bin in pairs(h.bins) do bins[#bins + 1] = bin end
  table.sort(bins)
  local wanted, seen = math.max(1, math.ceil(p * h.count)), 0
  for _, bin in ipairs(bins) do
    seen = seen + h.bins[bin]
    if seen >= wanted then
      if bin == 0 then return 1.0 end
      return math.min(h.max_us, math.exp((bin + 0.5) * STEP))
    end
  end
end

-- --- What the workers serve (globals of the script: "__main__:...") ----------

soak = {}

function soak.echo(x) return x end

function soak.tensor_range(t)
  return { t:numel(), t:min():item(), t:max():item() }
end

function soak.make(i) return { i = i } end

-- Rank 0 runs the barriers, gathers the reports and holds the async requests.
local barriers, reports = {}, {}

-- A barrier: the future of rank 0's clock when the last worker arrives.
function soak.arrive(name)
  local b = barriers[name]
  if b == nil then
    b = { count = 0, future = core.Future() }
    barriers[name] = b
  end
  b.count = b.count + 1
  if b.count == WORLD then b.future:set_result(now()) end
  return b.future
end
rpc.functions.async_execution(soak.arrive)

local function barrier(name)
  return rpc.rpc_sync("worker0", soak.arrive, { name }, CALL_OPTS)
end

local function reports_of(name)
  local r = reports[name]
  if r == nil then
    r = { count = 0, by_rank = {}, all = core.Future() }
    reports[name] = r
  end
  return r
end

-- Worker `rank`'s summary of part `name`; `expected` reports make it whole.
function soak.report(name, rank, expected, summary)
  local r = reports_of(name)
  r.by_rank[rank] = summary
  r.count = r.count + 1
  if r.count == expected then r.all:set_result(now()) end
  return true
end

local held = nil

-- Part 2: holds the request until all `held.expected` are in.
function soak.hold(sender, i)
  local h = held
  if h == nil then error("soak.hold: rank 0 holds no requests now", 0) end
  local future = core.Future()
  h.count = h.count + 1
  h.futures[h.count], h.answers[h.count] = future, 3 * i + sender
  if h.count % 500 == 0 then h.rss_peak = math.max(h.rss_peak, rss()) end
  if h.count == h.expected then h.all_in:set_result(now()) end
  return future
end
rpc.functions.async_execution(soak.hold)

-- --- Part 1: mixed calls -----------------------------------------------------

local KINDS = { "small", "tensor", "rref" }

local function peers()
  local list = {}
  for r = 0, WORLD - 1 do
    if r ~= RANK then list[#list + 1] = "worker" .. r end
  end
  return list
end

-- Tensors filled with 1..4, made once and sent again and again.
local function make_tensors()
  local list = {}
  for k = 1, 4 do
    list[k] = T.full({ opts.tensor_bytes // 4 }, k, { dtype = "float32" })
  end
  return list
end

-- Each call returns whether the answer is the right one.
local function calls(tensors)
  return {
    small = function(peer, i)
      local got = rpc.rpc_sync(peer, soak.echo,
        { { i = i, from = RANK, x = 0.5 } }, CALL_OPTS)
      return got.i == i and got.from == RANK and got.x == 0.5
    end,
    tensor = function(peer, i)
      local k = i % #tensors + 1
      local got = rpc.rpc_sync(peer, soak.tensor_range, { tensors[k] },
        CALL_OPTS)
      return got[1] == tensors[k]:numel() and got[2] == k and got[3] == k
    end,
    -- The RRef is dropped on return: the collector deletes it at its owner.
    rref = function(peer, i)
      local r = rpc.remote(peer, soak.make, { i }, CALL_OPTS)
      return r:to_here(opts.timeout).i == i
    end,
  }
end

local function new_tally()
  local tally = { done = 0, failed = 0, wrong = 0, hist = {} }
  for _, kind in ipairs(KINDS) do tally.hist[kind] = new_histogram() end
  return tally
end

local function kind_of(u)
  if u < opts.tensor_share then return "tensor" end
  if u < opts.tensor_share + opts.rref_share then return "rref" end
  return "small"
end

-- Makes n calls, opts.window at a time, into `tally`; on_progress(done)
-- is called every 256 calls.
local function run_calls(n, call, tally, on_progress)
  local targets, issued = peers(), 0
  local function one_call(i)
    local kind = kind_of(math.random())
    local peer = targets[math.random(#targets)]
    local start = now()
    local ok, right = pcall(call[kind], peer, i)
    record(tally.hist[kind], now() - start)
    if not ok then
      tally.failed = tally.failed + 1
      tally.first_error = tally.first_error or tostring(right):sub(1, 300)
    elseif not right then
      tally.wrong = tally.wrong + 1
    end
    tally.done = tally.done + 1
    if on_progress and tally.done % 256 == 0 then on_progress(tally.done) end
  end
  local function caller()
    while issued < n do
      issued = issued + 1
      one_call(issued)
    end
  end
  local tasks = {}
  for w = 1, math.min(opts.window, n) do tasks[w] = core.spawn(caller) end
  futures.wait_all(tasks)
end

local function rref_counts()
  local stats = rpc.stats()
  local r = stats.rrefs
  return { owners = r.owners, forks = r.forks, users = r.users,
    pending = r.pending, in_flight = stats.in_flight }
end

-- Collects until this worker's RRef counts are back to `before` and nothing
-- is in flight; false if that takes longer than `seconds`.
local function settle(before, seconds)
  local deadline = now() + seconds
  repeat
    collectgarbage()
    collectgarbage()
    local c = rref_counts()
    if c.owners == before.owners and c.forks == before.forks and
        c.users == before.users and c.pending == 0 and c.in_flight == 0 then
      return true, c
    end
    ember.sleep(0.02)
  until now() > deadline
  return false, rref_counts()
end

local function share_of(total, parts, index)
  return total // parts + (index < total % parts and 1 or 0)
end

-- A quiet moment: every worker is past `name` and has run its collector,
-- so no call, no received tensor and no dropped RRef is left anywhere.
local function quiesce(name)
  barrier(name)
  collectgarbage()
  collectgarbage()
  barrier(name .. "/collected")
end

local function worker_calls()
  -- Counted before any worker makes an RRef.
  local before = rref_counts()
  barrier("start")
  local call = calls(make_tensors())
  local mine = share_of(opts.calls, WORLD, RANK)

  local warm = new_tally()
  run_calls(opts.warmup, call, warm)
  quiesce("warm")
  local rss_start, heap_start = rss(), collectgarbage("count")

  local tally = new_tally()
  local start, last = now(), now()
  local function on_progress(done)
    if now() - last < opts.progress then
      return
    end
    last = now()
    progress("%d/%d calls (%.0f%%), %.0f calls/s, RSS %.1f MiB", done, mine,
      100 * done / mine, done / (last - start), rss() / 2^20)
  end
  run_calls(mine, call, tally, on_progress)
  local seconds = now() - start
  quiesce("done")
  local rss_end, heap_end = rss(), collectgarbage("count")
  local settled, after = settle(before, 30)
  local hist = {}
  for _, kind in ipairs(KINDS) do hist[kind] = packed(tally.hist[kind]) end
  return {
    calls = tally.done, failed = tally.failed + warm.failed,
    wrong = tally.wrong + warm.wrong,
    first_error = tally.first_error or warm.first_error,
    seconds = seconds, hist = hist,
    rss_start = rss_start, rss_end = rss_end,
    rss_hwm = common.status_bytes("VmHWM"),
    heap_start_kib = heap_start, heap_end_kib = heap_end,
    settled = settled, before = before, after = after,
  }
end

local function growth_pct(r)
  return 100 * (r.rss_end - r.rss_start) / r.rss_start
end

local function emit_workers(list)
  for rank = 0, WORLD - 1 do
    local r = list[rank]
    local all = new_histogram()
    for _, kind in ipairs(KINDS) do merge(all, r.hist[kind]) end
    common.emit("soak.worker", { rank = rank, calls = r.calls,
      failed = r.failed, wrong = r.wrong, first_error = r.first_error,
      seconds = r.seconds, p50_us = quantile(all, 0.5),
      p99_us = quantile(all, 0.99), max_us = all.max_us,
      rss_start_bytes = r.rss_start, rss_end_bytes = r.rss_end,
      rss_hwm_bytes = r.rss_hwm,
      rss_growth_pct = growth_pct(r), lua_heap_start_kib = r.heap_start_kib,
      lua_heap_end_kib = r.heap_end_kib, rrefs_ok = r.settled,
      owners_left = r.after.owners - r.before.owners,
      users_left = r.after.users - r.before.users,
      rref_messages_pending = r.after.pending,
      in_flight = r.after.in_flight })
  end
end

-- Whether the environment set glibc's mmap threshold itself (see the top).
local function mmap_threshold_set()
  local tunables = os.getenv("GLIBC_TUNABLES") or ""
  return tunables:find("glibc.malloc.mmap_threshold=", 1, true) ~= nil or
    os.getenv("MALLOC_MMAP_THRESHOLD_") ~= nil
end

local function emit_world(list, seconds)
  local all, by_kind = new_histogram(), {}
  local totals = { calls = 0, failed = 0, wrong = 0 }
  local growth, rrefs_ok, idle_ok, first_error = -math.huge, true, true, nil
  for _, kind in ipairs(KINDS) do by_kind[kind] = new_histogram() end
  for rank = 0, WORLD - 1 do
    local r = list[rank]
    for key in pairs(totals) do totals[key] = totals[key] + r[key] end
    for _, kind in ipairs(KINDS) do
      merge(all, r.hist[kind])
      merge(by_kind[kind], r.hist[kind])
    end
    growth = math.max(growth, growth_pct(r))
    rrefs_ok = rrefs_ok and r.settled
    idle_ok = idle_ok and r.after.pending == 0 and r.after.in_flight == 0
    first_error = first_error or r.first_error
  end
  local fields = { workers = WORLD, calls = totals.calls,
    answered_ok = totals.calls - totals.failed - totals.wrong,
    failed = totals.failed, wrong = totals.wrong, first_error = first_error,
    window = opts.window, warmup_calls = opts.warmup,
    tensor_bytes = opts.tensor_bytes, seconds = seconds,
    calls_per_s = totals.calls / seconds, p50_us = quantile(all, 0.5),
    p99_us = quantile(all, 0.99), max_us = all.max_us,
    tensor_gib = by_kind.tensor.count * opts.tensor_bytes / 2^30,
    rss_growth_pct = growth, rss_ok = growth <= MAX_RSS_GROWTH_PCT,
    mmap_threshold_set = mmap_threshold_set(),
    rrefs_ok = rrefs_ok, idle_ok = idle_ok }
  for _, kind in ipairs(KINDS) do
    local h = by_kind[kind]
    fields[kind .. "_calls"] = h.count
    fields[kind .. "_p50_us"] = quantile(h, 0.5)
    fields[kind .. "_p99_us"] = quantile(h, 0.99)
    fields[kind .. "_max_us"] = h.max_us
  end
  common.emit("soak.calls", fields)
end

local function part_calls()
  local summary = worker_calls()
  local r = reports_of("calls")
  if RANK ~= 0 then
    rpc.rpc_sync("worker0", soak.report, { "calls", RANK, WORLD, summary },
      CALL_OPTS)
    return
  end
  soak.report("calls", 0, WORLD, summary)
  r.all:wait()
  emit_workers(r.by_rank)
  -- From the warm-up barrier to the end of the slowest worker.
  local total = 0
  for rank = 0, WORLD - 1 do
    total = math.max(total, r.by_rank[rank].seconds)
  end
  emit_world(r.by_rank, total)
end

-- --- Part 2: pending async requests ------------------------------------------

local function send_held(count)
  local list = {}
  for k = 1, count do
    list[k] = rpc.rpc_async("worker0", soak.hold, { RANK, k }, CALL_OPTS)
  end
  futures.wait_any(list, { count = #list })
  local result = { answered = 0, wrong = 0, failed = 0 }
  for k, f in ipairs(list) do
    local ok, value = pcall(f.value, f)
    if not ok then
      result.failed = result.failed + 1
      result.first_error = result.first_error or tostring(value):sub(1, 300)
    elseif value == 3 * k + RANK then
      result.answered = result.answered + 1
    else
      result.wrong = result.wrong + 1
    end
  end
  return result
end

local function hold_all(n)
  held = { expected = n, count = 0, futures = {}, answers = {},
    all_in = core.Future(), rss_peak = 0 }
  local rss_before, heap_before = settled_rss()
  local released = barrier("async")
  futures.wait_any({ held.all_in }, { timeout = opts.timeout })
  local accept_s = now() - released
  local serving = rpc.stats().serving
  local rss_peak = math.max(held.rss_peak, rss())
  local heap_peak = collectgarbage("count")
  local answer_start = now()
  local h, accepted = held, held.count
  held = nil
  for k = 1, accepted do h.futures[k]:set_result(h.answers[k]) end
  local r = reports_of("async")
  futures.wait_any({ r.all }, { timeout = opts.timeout })
  local complete_s = now() - answer_start
  h = nil -- the answered futures go with it
  local rss_after, heap_after = settled_rss()
  local totals = { answered = 0, wrong = 0, failed = 0 }
  local first_error
  for rank = 1, WORLD - 1 do
    local one = r.by_rank[rank] or { answered = 0, wrong = 0, failed = 0 }
    for key in pairs(totals) do totals[key] = totals[key] + one[key] end
    first_error = first_error or one.first_error
  end
  common.emit("soak.async", { pending = n, senders = WORLD - 1,
    accepted = accepted, serving_at_peak = serving, accept_s = accept_s,
    complete_s = complete_s, answered_ok = totals.answered,
    wrong = totals.wrong, failed = totals.failed, first_error = first_error,
    all_ok = totals.answered == n, rss_before_bytes = rss_before,
    rss_peak_bytes = rss_peak, rss_after_bytes = rss_after,
    rss_hwm_bytes = common.status_bytes("VmHWM"),
    lua_heap_before_kib = heap_before, lua_heap_peak_kib = heap_peak,
    lua_heap_after_kib = heap_after,
    bytes_per_request = (rss_peak - rss_before) / n })
end

local function part_async()
  local n = opts.pending
  if RANK == 0 then
    hold_all(n)
    return
  end
  barrier("async")
  local result = send_held(share_of(n, WORLD - 1, RANK - 1))
  rpc.rpc_sync("worker0", soak.report, { "async", RANK, WORLD - 1, result },
    CALL_OPTS)
end

local function main()
  math.randomseed(opts.seed + RANK)
  rpc.init_rpc("worker" .. RANK)
  local start = now()
  progress("%d calls from %d workers, %d in flight each", opts.calls, WORLD,
    opts.window)
  part_calls()
  if opts.pending > 0 then
    progress("%d async-execution requests pending on rank 0", opts.pending)
    part_async()
  end
  rpc.shutdown()
  progress("done in %.1f s", now() - start)
end

main()
