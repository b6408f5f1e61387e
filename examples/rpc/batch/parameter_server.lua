-- Batch-updating parameter server: the first program of "Batch RPC
-- Processing with Asynchronous Execution". Rank 0 is the parameter server
-- "ps"; ranks 1..T are trainers "trainer<rank>". Each trainer fetches the
-- model, then for each iteration computes gradients on a batch and sends them
-- to the PS with update_and_fetch_model, an async_execution function: every
-- request adds its gradients and gets a future of the next model; the last
-- of the round averages the gradients, steps the optimizer and completes that
-- future, which answers all the round's trainers at once.
--
--   ember launch -n 5 examples/rpc/batch/parameter_server.lua [--iters 6]
--
-- The PS prints the seconds from the first rpc_async to the last trainer's
-- return ("4 trainers x 6 iterations: 1.234 s"), the figure FIGURES.md gives
-- for PyTorch. With --fixed-batch every trainer reuses one batch, so the loss
-- falls from one iteration to the next. --timing adds where the time went.
local ember = require "ember"
local rpc = ember.rpc
local T = ember.tensor
local nn = ember.nn
local optim = ember.optim
local futures = ember.futures

local NUM_CLASSES, IMAGE_C, IMAGE_W, IMAGE_H = 30, 3, 64, 64

local OPTIONS = {
  usage = "ember launch -n N examples/rpc/batch/parameter_server.lua " ..
    "[options]\n       (N = trainers + 1: rank 0 is the parameter server)",
  about = "A parameter server that applies its trainers' gradients in " ..
    "batches: one optimizer\nstep per round, once every trainer has sent " ..
    "its gradients.",
  { "trainers", nil, kind = "integer",
    "number of trainers; must be the world size - 1 (default: that)" },
  { "iters", 6, "iterations each trainer runs", min = 1 },
  { "batch-size", 20, "images per batch", min = 1 },
  { "hidden", 512, "hidden units of the MLP", min = 1 },
  { "lr", 0.001, "SGD learning rate" },
  { "momentum", 0.9, "SGD momentum" },
  { "seed", nil, kind = "integer",
    "random seed; trainer r draws with seed + r (default: unseeded)" },
  { "model", "mlp", "the model: MLP 3*64*64 -> hidden -> 30",
    choices = { "mlp" } },
  { "fixed-batch", false, "reuse one batch every iteration (the loss falls)" },
  { "copy", false, "copy_ the new model into the trainer's tensors " ..
    "instead of taking the received ones" },
  { "log", true, "print each trainer's iterations" },
  { "timing", false, "print where the time went (compute, waiting, the " ..
    "PS's work, CPU seconds)" },
}

local opts = ember.options.parse(arg, OPTIONS)

local PS_NAME = "ps"
local function trainer_name(rank) return "trainer" .. rank end

local WORLD_SIZE = tonumber(os.getenv("WORLD_SIZE"))
local RANK = tonumber(os.getenv("RANK"))

local function make_model()
  return nn.Sequential(nn.Flatten(),
    nn.Linear(IMAGE_C * IMAGE_W * IMAGE_H, opts.hidden), nn.ReLU(),
    nn.Linear(opts.hidden, NUM_CLASSES))
end

---------------------------------------------------------------------------
-- The parameter server. A plain class table: tables with a metatable are
-- not searched for remotely callable functions.

BatchUpdateParameterServer = {}
BatchUpdateParameterServer.__index = BatchUpdateParameterServer

function BatchUpdateParameterServer.new(batch_update_size)
  local self = setmetatable({}, BatchUpdateParameterServer)
  self.model = make_model()
  self.params = self.model:parameters()
  self.future_model = futures.Future()
  self.batch_update_size = batch_update_size
  self.curr_update_size = 0
  self.optimizer = optim.SGD(self.params,
    { lr = opts.lr, momentum = opts.momentum })
  for _, p in ipairs(self.params) do p.grad = T.zeros_like(p) end
  self.accumulate_s, self.step_s = 0, 0
  return self
end

-- The model travels as its list of parameter tensors, written to the socket
-- straight from the PS's storage.
function BatchUpdateParameterServer:get_model()
  return self.params
end

BatchUpdateParameterServer.update_and_fetch_model =
  rpc.functions.async_execution(function(ps_rref, grads)
    local self = ps_rref:local_value()
    local start = ember.clock()
    -- One thread runs all Lua on a worker and nothing here yields, so the
    -- requests of a round cannot interleave: no lock is needed.
    self.curr_update_size = self.curr_update_size + 1
    -- The first gradients of a round overwrite p.grad and the others add
    -- to it: the sum the tutorial gets by zeroing p.grad after each step,
    -- without that extra pass over the model.
    local first = self.curr_update_size == 1
    for i, p in ipairs(self.params) do
      -- Closed once added: a received tensor's storage goes back to ember's
      -- cache of big blocks at once, ready for the next request, instead of
      -- at the next collection (a fresh block costs page faults).
      local g <close> = grads[i]
      if first then p.grad:copy_(g) else p.grad:add_(g) end
    end
    -- The round's future, saved before the last request replaces it.
    local fut = self.future_model
    local added = ember.clock()
    self.accumulate_s = self.accumulate_s + (added - start)
    if self.curr_update_size >= self.batch_update_size then
      for _, p in ipairs(self.params) do
        p.grad:mul_(1 / self.batch_update_size)
      end
      self.curr_update_size = 0
      self.optimizer:step()
      self.step_s = self.step_s + (ember.clock() - added)
      fut:set_result(self.params)
      self.future_model = futures.Future()
    end
    return fut
  end)

---------------------------------------------------------------------------
-- A trainer: runs on ranks 1..T when the PS calls run_trainer.

-- The trainer's copy of the architecture, made when its worker starts (see
-- main): its random weights are never used, as the PS's replace them.
local trainer_model

-- Where each parameter lives in the model, in parameters() order, so that
-- received tensors can take their places.
local function parameter_slots(model)
  local slots = {}
  for name in model:named_parameters() do
    local path, key = name:match("^(.*)%.([^.]+)$")
    local m = model
    for part in path:gmatch("[^.]+") do m = m[part] end
    slots[#slots + 1] = { m, key }
  end
  return slots
end

Trainer = {}
Trainer.__index = Trainer

function Trainer.new(ps_rref)
  local self = setmetatable({}, Trainer)
  self.ps_rref = ps_rref
  self.loss_fn = nn.MSELoss()
  self.model = trainer_model
  self.slots = parameter_slots(self.model)
  self.params = self.model:parameters()
  -- The tutorial draws each trainer's labels once: one class per row.
  self.one_hot_indices = (T.rand(opts.batch_size, 1) * NUM_CLASSES):long()
    :clamp(0, NUM_CLASSES - 1):add(1)
  self.compute_s, self.wait_s = 0, 0
  return self
end

function Trainer:next_batch()
  if opts.fixed_batch and self.batch ~= nil then return self.batch end
  local inputs = T.randn(opts.batch_size, IMAGE_C, IMAGE_W, IMAGE_H)
  local labels = T.zeros(opts.batch_size, NUM_CLASSES)
    :scatter(2, self.one_hot_indices, 1)
  self.batch = { inputs, labels }
  return self.batch
end

-- Puts the PS's parameters into the local model. They arrive as new leaf
-- tensors that require grad and have no gradient yet, so the model can take
-- them as they are; copy_ would read and write all 25 MB once more (and
-- must drop the old gradients).
function Trainer:load(params)
  if opts.copy then
    T.no_grad(function()
      for i, p in ipairs(self.params) do
        p:copy_(params[i])
        p.grad = nil
      end
    end)
  else
    for i, slot in ipairs(self.slots) do slot[1][slot[2]] = params[i] end
    self.params = params
  end
end

function Trainer:train()
  local name = rpc.get_worker_info().name
  local ps = self.ps_rref:owner()
  self:load(self.ps_rref:rpc_sync():get_model())
  local losses = {}
  for i = 1, opts.iters do
    local start = ember.clock()
    local inputs, labels = table.unpack(self:next_batch())
    local loss = self.loss_fn(self.model(inputs), labels)
    loss:backward()
    local grads = {}
    for j, p in ipairs(self.params) do grads[j] = p.grad end
    local computed = ember.clock()
    self:load(rpc.rpc_sync(ps, BatchUpdateParameterServer.update_and_fetch_model,
      { self.ps_rref, grads }))
    local done = ember.clock()
    self.compute_s = self.compute_s + (computed - start)
    self.wait_s = self.wait_s + (done - computed)
    losses[i] = loss:item()
    if opts.log then
      print(("%s: iteration %d/%d  loss %.6f  (%.3f s)"):format(name, i,
        opts.iters, losses[i], done - start))
    end
  end
  if opts.timing then
    print(("%s: computing %.3f s, waiting for the PS %.3f s"):format(name,
      self.compute_s, self.wait_s))
  end
  return losses
end

-- What the PS starts on each trainer: its losses and the CPU seconds it
-- used (os.clock: this process's user and system time).
function run_trainer(ps_rref)
  local cpu = os.clock()
  if opts.seed then T.manual_seed(opts.seed + RANK) end
  local losses = Trainer.new(ps_rref):train()
  return { losses, os.clock() - cpu }
end

---------------------------------------------------------------------------
-- The PS's part, the tutorial's run_ps. The PS and its RRef live only in
-- here, so they are released before rpc.shutdown.

local function run_ps(trainers)
  local ps = BatchUpdateParameterServer.new(#trainers)
  local ps_rref = rpc.RRef(ps)
  local start, cpu = ember.clock(), os.clock()
  local futs = {}
  for i, trainer in ipairs(trainers) do
    futs[i] = rpc.rpc_async(trainer, run_trainer, { ps_rref })
  end
  local results = futures.wait_all(futs)
  local seconds = ember.clock() - start
  print(("%d trainers x %d iterations: %.3f s"):format(#trainers, opts.iters,
    seconds))
  if opts.timing then
    local ps_cpu, all_cpu = os.clock() - cpu, os.clock() - cpu
    for _, result in ipairs(results) do all_cpu = all_cpu + result[2] end
    print(("ps: adding gradients %.3f s, averaging and stepping %.3f s; " ..
      "CPU seconds %.3f (ps %.3f), %.2f cores busy"):format(ps.accumulate_s,
        ps.step_s, all_cpu, ps_cpu, all_cpu / seconds))
  end
end

local function fail(message)
  io.stderr:write(message .. "\n")
  os.exit(2)
end

local function main()
  if RANK == nil or WORLD_SIZE == nil or WORLD_SIZE < 2 then
    fail("this example needs a parameter server and at least one trainer: " ..
      "run it with\n  ember launch -n 5 " ..
      "examples/rpc/batch/parameter_server.lua [--trainers 4]")
  end
  local n_trainers = opts.trainers or WORLD_SIZE - 1
  if n_trainers ~= WORLD_SIZE - 1 then
    fail(("--trainers %d needs a world of %d workers (the PS and %d " ..
      "trainers), but it has %d: use ember launch -n %d"):format(n_trainers,
        n_trainers + 1, n_trainers, WORLD_SIZE, n_trainers + 1))
  end
  if RANK == 0 then
    if opts.seed then T.manual_seed(opts.seed) end
    rpc.init_rpc(PS_NAME)
    local trainers = {}
    for rank = 1, n_trainers do trainers[rank] = trainer_name(rank) end
    run_ps(trainers)
  else
    trainer_model = make_model()
    rpc.init_rpc(trainer_name(RANK))
  end
  rpc.shutdown()
end

main()
