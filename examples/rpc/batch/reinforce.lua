-- Batch-processing CartPole: the second program of "Batch RPC Processing with
-- Asynchronous Execution". One agent (rank 0) and N-1 observers; every
-- observer runs exactly --num-steps steps per episode (starting a new game
-- when one ends) and asks the agent for each action. With --batch the agent
-- answers all observers' requests of a step with one evaluation of the
-- policy: select_action_batch is an async_execution function that parks each
-- request on a future and evaluates the policy when the last one arrives.
-- With --no-batch each request is evaluated on its own. --batcher does the
-- gathering with ember's rpc.batched instead of by hand.
--
--   ember launch -n 4 examples/rpc/batch/reinforce.lua [--no-batch]
--   ember run examples/rpc/batch/reinforce.lua --sweep 2..11
--
-- The sweep reproduces the tutorial's main(): for each world size it times a
-- whole run (starting the processes included) in both modes, prints
-- "world_size, batch_s, nobatch_s", and writes a CSV and a PNG figure.
local ember = require "ember"
local rpc = ember.rpc
local T = ember.tensor
local optim = ember.optim
local futures = ember.futures
local Categorical = ember.distributions.Categorical

local here = (arg and arg[0] or ""):match("^(.*/)") or "./"
local Policy = dofile(here .. "../../cartpole_policy.lua")

-- Whether tensors can live on a GPU here: a GPU, and a build that has CUDA
-- tensors.
local function cuda_tensors()
  return ember.cuda.is_available() and
    pcall(function() return T.zeros(1):to("cuda") end)
end

local OPTIONS = {
  usage = "ember launch -n N examples/rpc/batch/reinforce.lua [options]\n" ..
    "       ember run examples/rpc/batch/reinforce.lua --sweep 2..11 [options]",
  about = "REINFORCE on CartPole with one agent and N-1 observers, the " ..
    "policy evaluated\nonce per step for all observers (--batch) or once " ..
    "per request (--no-batch).",
  { "batch", true, "evaluate the policy once per step for all observers" },
  { "batcher", false, "gather the requests with rpc.batched (implies --batch)" },
  { "num-episode", 10, "episodes to run", min = 1 },
  { "num-steps", 100, "steps each observer runs per episode", min = 1 },
  { "gamma", 1.0, "discount factor" },
  { "seed", 543, "random seed" },
  { "device", cuda_tensors() and "cuda" or "cpu",
    "where the agent's policy runs", choices = { "cpu", "cuda" } },
  { "log", true, "print each episode's rewards" },
  { "sweep", nil, kind = "string",
    "driver mode: time world sizes FROM..TO (or a list 2,3,6) in both modes" },
  { "out", "cartpole_sweep", "with --sweep: write OUT.csv and OUT.png" },
}

local opts = ember.options.parse(arg, OPTIONS)

local AGENT_NAME = "agent"
local function observer_name(rank) return "observer_" .. rank end

-- The observers' count, known to every worker from the launcher: rpc.batched
-- below gathers exactly that many requests per step.
local WORLD_SIZE = tonumber(os.getenv("WORLD_SIZE")) or 1
local N_OBSERVERS = math.max(WORLD_SIZE - 1, 1)

---------------------------------------------------------------------------
-- Observer: runs the environment, asks the agent for actions.

Observer = {}
Observer.__index = Observer

function Observer.new(mode)
  local self = setmetatable({}, Observer)
  self.id = rpc.get_worker_info().id        -- observers are ranks 1..N-1
  self.env = ember.envs.make("CartPole-v1", { seed = opts.seed })
  if mode == "batch" then
    self.select_action = Agent.select_action_batch
  elseif mode == "batcher" then
    self.select_action = Agent.select_action_batched
  else
    self.select_action = Agent.select_action
  end
  return self
end

-- Runs n_steps steps; returns each step's return (the discounted sum of the
-- rewards to the end of its game) and the length of the first game.
function Observer:run_episode(agent_rref, n_steps)
  local state, ep_reward = self.env:reset(), n_steps
  local rewards = {}
  local start_step = 1
  local agent = agent_rref:owner()
  for step = 1, n_steps do
    local action = rpc.rpc_sync(agent, self.select_action,
      { agent_rref, self.id, state:unsqueeze(1) })
    local reward, done
    state, reward, done = self.env:step(action)
    rewards[step] = reward
    if done or step == n_steps then
      local R = 0
      for i = step, start_step, -1 do
        R = rewards[i] + opts.gamma * R
        rewards[i] = R
      end
      state = self.env:reset()
      if start_step == 1 then ep_reward = math.min(ep_reward, step) end
      start_step = step + 1
    end
  end
  return { T.tensor(rewards), ep_reward }
end

---------------------------------------------------------------------------
-- Agent: owns the policy, answers observers, trains after each episode.

Agent = {}
Agent.__index = Agent

function Agent.new(world_size, mode)
  local self = setmetatable({}, Agent)
  self.mode = mode
  self.agent_rref = rpc.RRef(self)
  self.policy = Policy()
  if opts.device ~= "cpu" then self.policy:to(opts.device) end
  self.optimizer = optim.Adam(self.policy:parameters(), { lr = 1e-2 })
  self.running_reward = 0
  self.ob_rrefs = {}
  for ob_rank = 1, world_size - 1 do
    local ob_info = rpc.get_worker_info(observer_name(ob_rank))
    self.ob_rrefs[ob_rank] = rpc.remote(ob_info, Observer.new, { mode })
  end
  self:reset()
  return self
end

-- Forgets the last episode: the log-probabilities of the actions taken, each
-- with the observer and step it was for, and the batch being gathered.
function Agent:reset()
  self.log_probs, self.log_prob_keys = {}, {}
  self.steps = {}
  for ob_id = 1, #self.ob_rrefs do self.steps[ob_id] = 0 end
  self.states = T.zeros(#self.ob_rrefs, 4)
  self.pending_states = #self.ob_rrefs
  self.future_actions = futures.Future()
end

-- Notes log-probabilities `log_prob` (one per observer in `ob_ids`) for each
-- observer's next step.
function Agent:save_log_probs(log_prob, ob_ids)
  self.log_probs[#self.log_probs + 1] = log_prob
  local keys = self.log_prob_keys
  for _, ob_id in ipairs(ob_ids) do
    local step = self.steps[ob_id] + 1
    self.steps[ob_id] = step
    keys[#keys + 1] = { ob_id, step }
  end
end

-- `t` on the policy's device (the tutorial's .cuda()).
local function on_device(t)
  if opts.device == "cpu" then return t end
  return t:to(opts.device)
end

-- Samples an action for each row of `states`; returns the actions, on the
-- CPU.
function Agent:act(states, ob_ids)
  local m = Categorical(self.policy(on_device(states)))
  local actions = m:sample()
  self:save_log_probs(m:log_prob(actions), ob_ids)
  return actions:cpu()
end

-- One request, one evaluation of the policy.
function Agent.select_action(agent_rref, ob_id, state)
  local self = agent_rref:local_value()
  return self:act(state, { ob_id }):item()
end

local ALL_OBSERVERS = {}
for ob_id = 1, N_OBSERVERS do ALL_OBSERVERS[ob_id] = ob_id end

-- The tutorial's batching by hand: each request writes its state into the
-- step's batch and gets a future of its action; the last request of the step
-- evaluates the policy for all of them and completes that future.
Agent.select_action_batch = rpc.functions.async_execution(
  function(agent_rref, ob_id, state)
    local self = agent_rref:local_value()
    self.states[ob_id]:copy_(state[1])
    local future_action = self.future_actions:next(function(actions)
      return actions:value()[ob_id]
    end)
    -- One thread runs all Lua on a worker, so no lock is needed here.
    self.pending_states = self.pending_states - 1
    if self.pending_states == 0 then
      self.pending_states = #self.ob_rrefs
      -- The policy keeps its input for the backward pass: give it a copy,
      -- as the next step overwrites self.states.
      local actions = self:act(self.states:clone(), ALL_OBSERVERS)
      local ready = self.future_actions
      self.future_actions = futures.Future()
      ready:set_result(actions)
    end
    return future_action
  end)

-- The same with ember's batcher: the step's requests arrive as one list.
Agent.select_action_batched = rpc.batched(function(calls)
  local self = calls[1][1]:local_value()
  local ob_ids, states = {}, {}
  for i, call in ipairs(calls) do
    ob_ids[i], states[i] = call[2], call[3]
  end
  local actions = self:act(T.cat(states), ob_ids)
  local results = {}
  for i = 1, #calls do results[i] = actions[i] end
  return results
end, { max_size = N_OBSERVERS, max_delay = 1.0 })

-- Runs one episode on every observer, then one policy-gradient step.
function Agent:run_episode(n_steps)
  local futs = {}
  for i, ob_rref in ipairs(self.ob_rrefs) do
    futs[i] = ob_rref:rpc_async():run_episode(self.agent_rref, n_steps)
  end
  local rets = futures.wait_all(futs)
  local returns, ep_rewards = {}, 0
  for i, ret in ipairs(rets) do
    returns[i] = ret[1]:totable()
    ep_rewards = ep_rewards + ret[2]
  end
  ep_rewards = ep_rewards / #rets

  -- Each action's log-probability weighted by the return that followed it.
  local weights = {}
  for i, key in ipairs(self.log_prob_keys) do
    weights[i] = returns[key[1]][key[2]] / #rets
  end
  local policy_loss = -(T.cat(self.log_probs) * on_device(T.tensor(weights)))
  policy_loss:sum():backward()
  self.optimizer:step()
  self.optimizer:zero_grad()

  self:reset()
  self.running_reward = 0.5 * ep_rewards + 0.5 * self.running_reward
  return ep_rewards, self.running_reward
end

---------------------------------------------------------------------------
-- One world: rank 0 is the agent, the others observers.

local function mode_of(o)
  if o.batcher then return "batcher" end
  return o.batch and "batch" or "no-batch"
end

-- The agent's part. The agent and its observer RRefs live only in here, so
-- they are released before rpc.shutdown.
local function train()
  local start = ember.clock()
  local agent = Agent.new(WORLD_SIZE, mode_of(opts))
  for i_episode = 0, opts.num_episode - 1 do
    local last_reward, running_reward = agent:run_episode(opts.num_steps)
    if opts.log then
      print(("Episode %d\tLast reward: %.2f\tAverage reward: %.2f"):format(
        i_episode, last_reward, running_reward))
    end
  end
  print(("%d episodes of %d steps, %d observers, %s: %.3f s"):format(
    opts.num_episode, opts.num_steps, WORLD_SIZE - 1, mode_of(opts),
    ember.clock() - start))
end

local function run_worker()
  local rank = tonumber(os.getenv("RANK"))
  if rank == nil or WORLD_SIZE < 2 then
    io.stderr:write("this example needs an agent and at least one observer:\n"
      .. "  ember launch -n 2 examples/rpc/batch/reinforce.lua\n"
      .. "or time several world sizes with --sweep 2..11\n")
    os.exit(2)
  end
  if opts.device == "cuda" and not cuda_tensors() then
    io.stderr:write("--device cuda: no CUDA device here (no GPU, or an ember "
      .. "built without CUDA tensors); use --device cpu\n")
    os.exit(2)
  end
  T.manual_seed(opts.seed)
  if rank == 0 then
    rpc.init_rpc(AGENT_NAME)
    train()
  else
    rpc.init_rpc(observer_name(rank))
  end
  rpc.shutdown()
end

---------------------------------------------------------------------------
-- The sweep: the tutorial's main(), timing whole runs.

local function parse_sizes(text)
  local sizes = {}
  local from, to = text:match("^(%d+)%.%.(%d+)$")
  if from then
    for n = tonumber(from), tonumber(to) do sizes[#sizes + 1] = n end
  else
    for word in text:gmatch("[^,]+") do
      sizes[#sizes + 1] = math.tointeger(tonumber(word))
      if sizes[#sizes] == nil then return nil end
    end
  end
  for _, n in ipairs(sizes) do
    if n < 2 then return nil end
  end
  return #sizes > 0 and sizes or nil
end

local function quote(word) return "'" .. word:gsub("'", "'\\''") .. "'" end

-- The options a run of the sweep passes on to its workers.
local function run_arguments(batch)
  return table.concat({
    batch and (opts.batcher and "--batcher" or "--batch") or "--no-batch",
    "--no-log", "--num-episode", opts.num_episode, "--num-steps",
    opts.num_steps, "--gamma", opts.gamma, "--seed", opts.seed,
    "--device", opts.device }, " ")
end

-- Runs a shell command; returns whether it succeeded and its output.
local function run_command(command)
  local pipe = assert(io.popen(command .. " 2>&1"))
  local output = pipe:read("a")
  return pipe:close() == true, output
end

-- Times one world: `ember launch -n world_size` of this script.
local function timed_run(ember_bin, script, world_size, batch)
  local start = ember.clock()
  local ok, output = run_command(("%s launch -n %d %s %s"):format(
    quote(ember_bin), world_size, quote(script), run_arguments(batch)))
  local seconds = ember.clock() - start
  if not ok then
    error(("world size %d (%s) failed:\n%s"):format(world_size,
      batch and "batch" or "no batch", output), 0)
  end
  return seconds
end

local PLOT = [[
set terminal pngcairo size 800,500 font "sans,11"
set output '%s'
set datafile separator ','
set title "Batch CartPole on ember: %d episodes x %d steps"
set xlabel 'number of observers'
set ylabel 'seconds (starting the processes included)'
set key top left
set grid
plot '%s' using ($1-1):2 with linespoints lw 2 pt 7 title 'batch', \
     '' using ($1-1):3 with linespoints lw 2 pt 5 title 'no batch'
]]

-- A path inside gnuplot's single quotes, where '' stands for '.
local function gnuplot_quoted(path) return (path:gsub("'", "''")) end

local function draw_figure(csv, png)
  local script = os.tmpname()
  local f = assert(io.open(script, "w"))
  f:write(PLOT:format(gnuplot_quoted(png), opts.num_episode, opts.num_steps,
    gnuplot_quoted(csv)))
  f:close()
  -- gnuplot is not ours to check: a sanitizer preloaded into ember (as
  -- scripts/test does) is not passed on to it.
  local ok, output = run_command("env -u LD_PRELOAD gnuplot " .. quote(script))
  os.remove(script)
  if not ok then
    return nil, "gnuplot failed (is gnuplot installed? scripts/setup " ..
      "installs it): " .. output
  end
  return true
end

local function sweep()
  local sizes = parse_sizes(opts.sweep)
  if sizes == nil then
    io.stderr:write(("--sweep needs world sizes >= 2 as FROM..TO or a list " ..
      "like 2,3,6; got '%s'\n"):format(opts.sweep))
    os.exit(2)
  end
  local ember_bin = require("ember.core").executable_path()
  local script = arg[0]
  local csv_path, png_path = opts.out .. ".csv", opts.out .. ".png"
  local csv = assert(io.open(csv_path, "w"))
  csv:write("world_size,batch_s,nobatch_s\n")
  print("world_size, batch_s, nobatch_s")
  for _, world_size in ipairs(sizes) do
    local batch_s = timed_run(ember_bin, script, world_size, true)
    local nobatch_s = timed_run(ember_bin, script, world_size, false)
    print(("%d, %.3f, %.3f"):format(world_size, batch_s, nobatch_s))
    csv:write(("%d,%.4f,%.4f\n"):format(world_size, batch_s, nobatch_s))
    csv:flush()
  end
  csv:close()
  local drawn, err = draw_figure(csv_path, png_path)
  if drawn then
    print(("wrote %s and %s"):format(csv_path, png_path))
  else
    print(("wrote %s; no figure: %s"):format(csv_path, err))
  end
end

if opts.sweep then sweep() else run_worker() end
