-- REINFORCE on CartPole with RPC and RRefs: the first program of "Getting
-- Started with Distributed RPC Framework" ("Distributed Reinforcement
-- Learning using RPC and RRef"). One agent (rank 0, "agent") owns the policy
-- and trains it; N-1 observers (ranks 1.., "obs1", "obs2", ...) each own an
-- environment. For every episode the agent asks each observer, through an
-- RRef to it, to play one game; the observer asks the agent for each action
-- and reports each reward back, through an RRef to the agent. After every
-- episode the agent takes one policy-gradient step.
--
--   ember launch -n N examples/rpc/reinforce.lua [--gamma G] [--seed N]
--                              [--log-interval N] [--max-episodes N]
--
-- The world size is launch's -n (at least 2: an agent and one observer).
-- Exits 0 once the running reward passes the environment's threshold (475),
-- 1 if --max-episodes pass first.
local ember = require "ember"
local rpc = ember.rpc
local T = ember.tensor
local optim = ember.optim
local futures = ember.futures
local Categorical = ember.distributions.Categorical

local here = (arg and arg[0] or ""):match("^(.*/)") or "examples/rpc/"
local Policy = dofile(here .. "../cartpole_policy.lua")

local USAGE = "ember launch -n N examples/rpc/reinforce.lua [options]"

-- The tutorial's --world_size is launch's -n here.
for _, word in ipairs(arg or {}) do
  local flag = word:match("^%-%-world[-_]size")
  if flag then
    io.stderr:write(("there is no %s option: the world size is launch's -n, "
      .. "as in\n  %s\n"):format(flag, USAGE))
    os.exit(2)
  end
end

local opts = ember.options.parse(arg, {
  usage = USAGE,
  about = "REINFORCE on CartPole-v1 with one agent (rank 0) and N-1 " ..
    "observers, which\nask the agent for actions and report rewards through " ..
    "an RRef to it. Runs\nuntil the running reward passes 475.",
  { "gamma", 0.99, "how much to value future rewards" },
  { "seed", 1, "random seed; observer i's environment gets seed + i" },
  { "log-interval", 10, "episodes between training status logs", min = 1 },
  { "max-episodes", 2000, "give up (exit status 1) after this many episodes",
    min = 1 },
})


local AGENT_NAME = "agent"
local function observer_name(rank) return "obs" .. rank end

-- The smallest float32 step, as the tutorial's np.finfo(np.float32).eps.
local EPS = 2.0 ^ -23

---------------------------------------------------------------------------
-- Observer: owns an environment and plays one game when the agent asks.
-- Observer and Agent are globals (plain tables), so their functions are
-- reachable for RPC as "__main__:Observer.new" and so on.

Observer = {}
Observer.__index = Observer

function Observer.new()
  local self = setmetatable({}, Observer)
  self.id = rpc.get_worker_info().id        -- observers are ranks 1..N-1
  self.env = ember.envs.make("CartPole-v1", { seed = opts.seed + self.id })
  return self
end

-- Plays one game. As in the tutorial, each step makes two round trips: one
-- to get the action for the state, one to report the reward (sending both
-- in one call would halve them, but the point is to show the API).
function Observer:run_episode(agent_rref)
  local state = self.env:reset()
  for _ = 1, 10000 do
    local action = agent_rref:rpc_sync():select_action(self.id, state)
    local reward, done
    state, reward, done = self.env:step(action)
    agent_rref:rpc_sync():report_reward(self.id, reward)
    -- The environment ends every game after 500 steps.
    if done then break end
  end
end

---------------------------------------------------------------------------
-- Agent: owns the policy, answers the observers, trains after each episode.

Agent = {}
Agent.__index = Agent

function Agent.new(world_size)
  local self = setmetatable({}, Agent)
  self.agent_rref = rpc.RRef(self)
  self.ob_rrefs, self.ob_ids = {}, {}
  self.rewards, self.saved_log_probs = {}, {}
  self.policy = Policy()
  self.optimizer = optim.Adam(self.policy:parameters(), { lr = 1e-2 })
  self.running_reward = 0
  self.reward_threshold = ember.envs.make("CartPole-v1").reward_threshold
  for ob_rank = 1, world_size - 1 do
    local ob_info = rpc.get_worker_info(observer_name(ob_rank))
    self.ob_rrefs[ob_rank] = rpc.remote(ob_info, Observer.new)
    self.ob_ids[ob_rank] = ob_info.id
    self.rewards[ob_info.id] = {}
    self.saved_log_probs[ob_info.id] = {}
  end
  return self
end

-- Called by observer `ob_id` through the agent's RRef: samples an action for
-- `state` (a {4} tensor) and keeps its log-probability for training.
function Agent:select_action(ob_id, state)
  local probs = self.policy(state:unsqueeze(1))
  local m = Categorical(probs)
  local action = m:sample()
  local log_probs = self.saved_log_probs[ob_id]
  log_probs[#log_probs + 1] = m:log_prob(action)
  return action:item()
end

function Agent:report_reward(ob_id, reward)
  local rewards = self.rewards[ob_id]
  rewards[#rewards + 1] = reward
end

-- Has every observer play one game, all at once, and waits for all of them.
-- The agent passes its own RRef, so the observers' calls back to it are
-- nested RPCs.
function Agent:run_episode()
  local futs = {}
  for i, ob_rref in ipairs(self.ob_rrefs) do
    futs[i] = ob_rref:rpc_async():run_episode(self.agent_rref)
  end
  futures.wait_all(futs)
end

-- One policy-gradient step from the episode's rewards and log-probabilities;
-- returns the episode's reward (the smallest of the observers').
--
-- The tutorial concatenates all observers' rewards into one list before
-- discounting, so an observer's returns run on into the next observer's
-- game. Here each observer's returns are discounted over its own rewards
-- only; with one observer (world size 2) the two are the same. As in the
-- tutorial, the returns of all observers are then normalised together.
function Agent:finish_episode()
  local log_probs, returns = {}, {}
  local min_reward = math.huge
  for _, ob_id in ipairs(self.ob_ids) do
    local rewards = self.rewards[ob_id]
    local R, first = 0.0, #returns
    for i = #rewards, 1, -1 do
      R = rewards[i] + opts.gamma * R
      returns[first + i] = R
    end
    table.move(self.saved_log_probs[ob_id], 1, #self.saved_log_probs[ob_id],
      #log_probs + 1, log_probs)
    local ep_reward = 0
    for _, r in ipairs(rewards) do ep_reward = ep_reward + r end
    min_reward = math.min(min_reward, ep_reward)
    self.rewards[ob_id], self.saved_log_probs[ob_id] = {}, {}
  end

  -- The running reward follows the worst observer's game.
  self.running_reward = 0.05 * min_reward + (1 - 0.05) * self.running_reward

  local r = T.tensor(returns)
  if #returns > 1 then
    r = (r - r:mean()) / (r:std() + EPS)
  else
    r = r - r:mean()
  end
  local policy_loss = T.cat(log_probs) * -r
  self.optimizer:zero_grad()
  policy_loss:sum():backward()
  self.optimizer:step()
  return min_reward
end

---------------------------------------------------------------------------
-- One world: rank 0 is the agent, the others observers.

-- The agent's part; returns the exit status. The agent and its observer
-- RRefs live only in here, so they are released before rpc.shutdown.
local function train(world_size)
  local start = ember.clock()
  local agent = Agent.new(world_size)
  print(("This will run until reward threshold of %.1f is reached (at most "
    .. "%d episodes). Ctrl+C to exit."):format(agent.reward_threshold,
    opts.max_episodes))
  for i_episode = 1, opts.max_episodes do
    agent:run_episode()
    local last_reward = agent:finish_episode()
    if i_episode % opts.log_interval == 0 then
      print(("Episode %d\tLast reward: %.2f\tAverage reward: %.2f"):format(
        i_episode, last_reward, agent.running_reward))
    end
    if agent.running_reward > agent.reward_threshold then
      print(("Solved! Running reward is now %s! (episode %d, %.1f s)"):format(
        agent.running_reward, i_episode, ember.clock() - start))
      return 0
    end
  end
  print(("Not solved in %d episodes (running reward %.2f, %.1f s).")
    :format(opts.max_episodes, agent.running_reward, ember.clock() - start))
  return 1
end

local function run_worker()
  local rank = tonumber(os.getenv("RANK"))
  local world_size = tonumber(os.getenv("WORLD_SIZE"))
  if rank == nil or world_size == nil or world_size < 2 then
    io.stderr:write("this example needs an agent and at least one observer; "
      .. "start it with\n  ember launch -n 2 examples/rpc/reinforce.lua "
      .. "[options]\n(-n is the world size: 1 agent + N-1 observers)\n")
    os.exit(2)
  end
  T.manual_seed(opts.seed)
  local status = 0
  if rank == 0 then
    rpc.init_rpc(AGENT_NAME)
    status = train(world_size)
  else
    -- Observers wait passively for the agent's commands.
    rpc.init_rpc(observer_name(rank))
  end
  -- Blocks until all workers are done, then stops RPC.
  rpc.shutdown()
  os.exit(status)
end

run_worker()
