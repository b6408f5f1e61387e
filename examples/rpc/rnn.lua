-- Distributed RNN with distributed autograd and a distributed optimizer: the
-- second program of "Getting Started with Distributed RPC Framework". The
-- word language model's three parts are split across two workers: the
-- parameter server "ps" (rank 0) holds the embedding table and the decoder,
-- the "trainer" (rank 1) holds the LSTM and drives training. Each iteration
-- runs in a distributed autograd context: the forward pass goes trainer ->
-- ps -> trainer -> ps -> trainer, the backward pass retraces it through the
-- recorded RPCs, and the DistributedOptimizer steps the SGD optimizers of
-- both workers with the context's gradients.
--
--   ember launch -n 2 examples/rpc/rnn.lua [--epochs 10] [--iters 120]
--
-- The tutorial trains on random numbers; here the data is a small task that
-- can be learnt: sequences that follow a fixed random permutation of the
-- tokens, so each token predicts the next. The trainer prints the mean loss
-- of every epoch; it starts at about ln(ntoken) and stays near it until
-- the small uniform(-0.1, 0.1) weights of the embedding and the decoder
-- have grown. With the tutorial's plain SGD and lr 0.05 a wide embedding
-- (--ninp 256) makes that plateau short: the default run goes from 2.29
-- to about 0.3 in 1200 iterations, a few seconds.
local ember = require "ember"
local rpc = ember.rpc
local T = ember.tensor
local nn = ember.nn
local optim = ember.optim
local dist_autograd = ember.dist_autograd
local dist_optim = ember.dist_optim

local USAGE = "ember launch -n 2 examples/rpc/rnn.lua [options]"

local opts = ember.options.parse(arg, {
  usage = USAGE,
  about = "An RNN split across a parameter server (rank 0: embedding table " ..
    "and decoder)\nand a trainer (rank 1: the LSTM), trained with " ..
    "distributed autograd and a\nDistributedOptimizer on sequences that " ..
    "follow a fixed permutation of the tokens.",
  { "epochs", 10, "epochs to train", min = 1 },
  { "iters", 120, "iterations (batches) per epoch", min = 1 },
  { "lr", 0.05, "SGD learning rate" },
  { "seed", 1, "random seed (model, dropout and data)" },
  { "device", "cpu", "where the embedding table runs on the PS " ..
    "(cpu, cuda, cuda:N)" },
  { "dropout", 0.1, "dropout of the embedding, the LSTM and the decoder" },
  { "ntoken", 10, "vocabulary size", min = 2 },
  { "ninp", 256, "embedding size", min = 1 },
  { "nhid", 32, "LSTM hidden size", min = 1 },
  { "nlayers", 1, "LSTM layers", min = 1 },
  { "seq-len", 4, "tokens per sequence", min = 1 },
  { "batch", 16, "sequences per batch", min = 1 },
})

local PS_NAME, TRAINER_NAME = "ps", "trainer"

---------------------------------------------------------------------------
-- The parameter server's modules, made there by the trainer's rpc.remote.

-- Encoding layers of the RNNModel. The embedding lives on --device; RPC
-- carries CPU tensors, so forward moves its input there and the result back.
-- Globals of the script, so that rpc.remote can name their constructors.
EmbeddingTable = nn.Module:extend("EmbeddingTable")

function EmbeddingTable:init(ntoken, ninp, dropout, device)
  self.device = device
  self.drop = nn.Dropout(dropout)
  self.encoder = nn.Embedding(ntoken, ninp):to(device)
  nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
end

function EmbeddingTable:forward(input)
  return self.drop(self.encoder(input:to(self.device)):to("cpu"))
end

Decoder = nn.Module:extend("Decoder")

function Decoder:init(ntoken, nhid, dropout)
  self.drop = nn.Dropout(dropout)
  self.decoder = nn.Linear(nhid, ntoken)
  nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
  nn.init.zeros_(self.decoder.bias)
end

function Decoder:forward(output)
  return self.decoder(self.drop(output))
end

---------------------------------------------------------------------------
-- The model, on the trainer: RRefs to the remote parts and a local LSTM.

local RNNModel = nn.Module:extend("RNNModel")

function RNNModel:init(ps, ntoken, ninp, nhid, nlayers, dropout, device)
  self.emb_table_rref = rpc.remote(ps, EmbeddingTable.new,
    { ntoken, ninp, dropout, device })
  self.rnn = nn.LSTM(ninp, nhid, { num_layers = nlayers, dropout = dropout })
  self.decoder_rref = rpc.remote(ps, Decoder.new, { ntoken, nhid, dropout })
end

-- input {seq, batch} of tokens, hidden {h, c} -> logits {seq, batch,
-- ntoken}, the new hidden state. The two proxy calls are RPCs to the PS.
function RNNModel:forward(input, hidden)
  local emb = self.emb_table_rref:rpc_sync():forward(input)
  local output
  output, hidden = self.rnn(emb, hidden)
  return self.decoder_rref:rpc_sync():forward(output), hidden
end

-- One RRef per parameter, wherever it lives: what the DistributedOptimizer
-- takes. The PS makes the RRefs of its own parameters.
function RNNModel:parameter_rrefs()
  local rrefs = {}
  local function extend(list) table.move(list, 1, #list, #rrefs + 1, rrefs) end
  extend(self.emb_table_rref:rpc_sync():parameter_rrefs())
  extend(self.rnn:parameter_rrefs())
  extend(self.decoder_rref:rpc_sync():parameter_rrefs())
  return rrefs
end

---------------------------------------------------------------------------
-- The trainer.

-- Batches of the task: each sequence starts at a random token and then
-- follows `next_token`, a fixed permutation; the target of each position is
-- the token after it.
local function make_batches(ntoken, seq_len, batch)
  local next_token, order = {}, {}
  for i = 1, ntoken do order[i] = i end
  for i = ntoken, 2, -1 do
    local j = math.random(i)
    order[i], order[j] = order[j], order[i]
  end
  for i = 1, ntoken do next_token[order[i]] = order[i % ntoken + 1] end
  return function()
    local input, target = {}, {}
    for s = 1, seq_len do input[s], target[s] = {}, {} end
    for b = 1, batch do
      local token = math.random(ntoken)
      for s = 1, seq_len do
        input[s][b] = token
        token = next_token[token]
        target[s][b] = token
      end
    end
    return T.tensor(input), T.tensor(target)
  end
end

local function run_trainer()
  local ntoken = opts.ntoken
  local model = RNNModel(PS_NAME, ntoken, opts.ninp, opts.nhid, opts.nlayers,
    opts.dropout, opts.device)
  local opt = dist_optim.DistributedOptimizer(optim.SGD,
    model:parameter_rrefs(), { lr = opts.lr })
  local criterion = nn.CrossEntropyLoss()
  local next_batch = make_batches(ntoken, opts.seq_len, opts.batch)
  local hidden = {
    T.zeros(opts.nlayers, opts.batch, opts.nhid),
    T.zeros(opts.nlayers, opts.batch, opts.nhid),
  }
  local losses, started = {}, ember.clock()
  for epoch = 1, opts.epochs do
    local start, total = ember.clock(), 0
    for _ = 1, opts.iters do
      local data, target = next_batch()
      dist_autograd.context(function(ctx)
        -- The state carries over from batch to batch, but not its graph.
        hidden = { hidden[1]:detach(), hidden[2]:detach() }
        local output
        output, hidden = model(data, hidden)
        local loss = criterion(output:reshape({ -1, ntoken }),
          target:reshape({ -1 }))
        dist_autograd.backward(ctx, { loss })
        -- No zero_grad: the gradients are the context's, made afresh each
        -- iteration.
        opt:step(ctx)
        total = total + loss:item()
      end)
    end
    losses[epoch] = total / opts.iters
    print(("epoch %d/%d  loss %.4f  (%.2f s)"):format(epoch, opts.epochs,
      losses[epoch], ember.clock() - start))
  end
  print(("loss %.4f (epoch 1) -> %.4f (epoch %d) in %.2f s; a uniform " ..
    "guess scores ln %d = %.4f"):format(losses[1], losses[opts.epochs],
      opts.epochs, ember.clock() - started, ntoken, math.log(ntoken)))
end

---------------------------------------------------------------------------

local function fail(message)
  io.stderr:write(message .. "\n")
  os.exit(2)
end

local function main()
  local rank = tonumber(os.getenv("RANK"))
  local world_size = tonumber(os.getenv("WORLD_SIZE"))
  if rank == nil or world_size == nil then
    fail("this example needs a parameter server and a trainer: run it " ..
      "with\n  " .. USAGE)
  end
  if world_size ~= 2 then
    fail(("this example needs a world of 2 workers (the PS and the " ..
      "trainer), but it has %d: use ember launch -n 2"):format(world_size))
  end
  -- Tried here, rather than when the PS makes the embedding table.
  local ok, err = pcall(T.zeros, 1, { device = opts.device })
  if not ok then
    fail(("--device %s: %s"):format(opts.device,
      (tostring(err):gsub("^zeros: ", ""))))
  end
  T.manual_seed(opts.seed + rank)
  math.randomseed(opts.seed)
  if rank == 1 then
    rpc.init_rpc(TRAINER_NAME)
    run_trainer()
  else
    -- The parameter server does nothing but answer the trainer.
    rpc.init_rpc(PS_NAME)
  end
  -- Blocks until all workers are done, then stops RPC.
  rpc.shutdown()
end

main()
