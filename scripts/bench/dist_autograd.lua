-- Distributed autograd benchmark:
--   ember launch -n 2 scripts/bench/dist_autograd.lua [--quick]
-- Rank 0 ("trainer") calls rank 1 ("ps") and prints one JSON object a line:
--   dist_autograd.round_trip  rpc_sync of a small tensor that requires grad,
--                             outside any context and inside one (recorded
--                             send and recv): median µs
--   dist_autograd.context     a context opened, one call made in it, and
--                             closed (freed on both workers): median µs
--   dist_autograd.rnn         the tutorial's RNN (embedding and decoder on
--                             ps, LSTM here, its sizes): median µs of forward,
--                             backward, optimizer step and context close, and
--                             iterations/s
-- FIGURES.md has no PyTorch figure for this workload; its plain rpc_sync
-- round trip (202 µs) is given next to ours for scale.
local ember = require "ember"
local rpc, T, nn, optim = ember.rpc, ember.tensor, ember.nn, ember.optim
local dist_autograd = require "ember.dist_autograd"
local dist_optim = require "ember.dist_optim"

local here = (arg and arg[0] or ""):match("^(.*/)") or "scripts/bench/"
local common = dofile(here .. "common.lua")
local now = ember.clock

local opts = ember.options.parse(arg, {
  usage = "ember launch -n 2 scripts/bench/dist_autograd.lua [--quick]",
  about = "Round trips in and out of a distributed autograd context, and " ..
    "the tutorial's RNN\ntrained with distributed autograd and the " ..
    "distributed optimizer.",
  { "quick", false, "fewer repetitions: a smoke test of the benchmark" },
})

-- The tutorial's sizes.
local NTOKEN, NINP, NHID, NLAYERS, BATCH, NINDICES = 10, 2, 3, 4, 5, 3

-- What ps serves (globals of the script: "__main__:...").
bench = {}
function bench.echo(x) return x end
function bench.embedding() return nn.Embedding(NTOKEN, NINP) end
function bench.decoder() return nn.Linear(NHID, NTOKEN) end

local function median(list)
  table.sort(list)
  return list[(#list + 1) // 2]
end

-- Median µs of fn(i) for i = 1..n; fn may return the seconds to count
-- (the part it times itself).
local function timed(n, fn)
  local times = {}
  for i = 1, n do
    local start = now()
    local seconds = fn(i)
    times[i] = (seconds or now() - start) * 1e6
  end
  return median(times)
end

local function round_trips(n)
  local x = T.ones(4, { requires_grad = true })
  for _ = 1, 200 do rpc.rpc_sync("ps", bench.echo, { x }) end
  local plain = timed(n, function() rpc.rpc_sync("ps", bench.echo, { x }) end)
  -- Contexts of 10 calls each, as a training step has a few: one context
  -- holding thousands of sends would measure its growth instead.
  local ctx
  local recorded = timed(n, function(i)
    if i % 10 == 1 then
      if ctx then ctx:close() end
      ctx = dist_autograd.new_context()
    end
    local start = now()
    rpc.rpc_sync("ps", bench.echo, { x })
    return now() - start
  end)
  ctx:close()
  common.emit("dist_autograd.round_trip", { plain_median_us = plain,
    in_context_median_us = recorded, overhead_us = recorded - plain,
    pytorch_plain_us = 202 })
end

local function contexts(n)
  local x = T.ones(4, { requires_grad = true })
  local us = timed(n, function()
    dist_autograd.context(function() rpc.rpc_sync("ps", bench.echo, { x }) end)
  end)
  common.emit("dist_autograd.context", { open_call_close_median_us = us,
    contexts_left = rpc.stats().dist_autograd.contexts })
end

local function rnn(n)
  T.manual_seed(1)
  local emb = rpc.remote("ps", bench.embedding, {})
  local dec = rpc.remote("ps", bench.decoder, {})
  local lstm = nn.LSTM(NINP, NHID, { num_layers = NLAYERS })
  local rrefs = {}
  for _, list in ipairs({ emb:rpc_sync():parameter_rrefs(),
      lstm:parameter_rrefs(), dec:rpc_sync():parameter_rrefs() }) do
    for _, r in ipairs(list) do rrefs[#rrefs + 1] = r end
  end
  local opt = dist_optim.DistributedOptimizer(optim.SGD, rrefs, { lr = 0.05 })
  local criterion = nn.CrossEntropyLoss()
  local hidden = { T.randn(NLAYERS, NINDICES, NHID), T.randn(NLAYERS, NINDICES, NHID) }
  local data = (T.rand(BATCH, NINDICES) * NTOKEN):to("int64") + 1
  local target = (T.rand(BATCH * NINDICES) * NTOKEN):to("int64") + 1
  local parts = { forward = {}, backward = {}, step = {}, close = {} }
  local loss_first, loss_last
  local start = now()
  for i = 1, n do
    local ctx = dist_autograd.new_context()
    local t0 = now()
    hidden = { hidden[1]:detach(), hidden[2]:detach() }
    local out
    out, hidden = lstm(emb:rpc_sync():forward(data), hidden)
    local decoded = dec:rpc_sync():forward(out)
    local loss = criterion(decoded:reshape({ -1, NTOKEN }), target)
    local t1 = now()
    dist_autograd.backward(ctx, { loss })
    local t2 = now()
    opt:step(ctx)
    local t3 = now()
    ctx:close()
    local t4 = now()
    parts.forward[i], parts.backward[i] = (t1 - t0) * 1e6, (t2 - t1) * 1e6
    parts.step[i], parts.close[i] = (t3 - t2) * 1e6, (t4 - t3) * 1e6
    loss_first = loss_first or loss:item()
    loss_last = loss:item()
  end
  local seconds = now() - start
  common.emit("dist_autograd.rnn", { iterations = n,
    iterations_per_s = n / seconds,
    forward_median_us = median(parts.forward),
    backward_median_us = median(parts.backward),
    step_median_us = median(parts.step),
    close_median_us = median(parts.close),
    loss_first = loss_first, loss_last = loss_last,
    contexts_left = rpc.stats().dist_autograd.contexts })
end

local function main()
  local rank = tonumber(os.getenv("RANK"))
  if rank == nil then
    io.stderr:write("run it with: ember launch -n 2 scripts/bench/dist_autograd.lua\n")
    os.exit(2)
  end
  rpc.init_rpc(rank == 0 and "trainer" or "ps")
  if rank == 0 then
    round_trips(opts.quick and 500 or 5000)
    contexts(opts.quick and 300 or 3000)
    rnn(opts.quick and 100 or 1000)
    common.emit("dist_autograd.memory", { rss_bytes = common.rss_bytes() })
  end
  rpc.shutdown()
end

main()
