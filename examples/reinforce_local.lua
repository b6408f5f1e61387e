-- REINFORCE on CartPole in one process, no RPC: the policy and training loop
-- of the "Getting Started with Distributed RPC Framework" tutorial with the
-- agent and its observer folded together. It shows the math learns before
-- anything is distributed.
--
--   ember run examples/reinforce_local.lua [--seed N] [--gamma G]
--                                          [--max-episodes N] [--log-interval N]
--
-- Exits 0 once the running reward passes the environment's threshold (475),
-- 1 if --max-episodes pass first.
local ember = require "ember"
local T = ember.tensor
local optim = ember.optim
local Categorical = ember.distributions.Categorical

local USAGE = [[
usage: ember run examples/reinforce_local.lua [options]
  --seed N           random seed for the policy and the environment (default 1)
  --gamma G          discount factor (default 0.99)
  --lr X             Adam's learning rate (default 0.01)
  --max-episodes N   give up after N episodes (default 2000)
  --log-interval N   print progress every N episodes (default 10)
  --help             show this help]]

local function parse_args(argv)
  local opts = { seed = 1, gamma = 0.99, lr = 1e-2, max_episodes = 2000,
    log_interval = 10 }
  local i = 1
  while i <= #argv do
    local flag = argv[i]
    if flag == "--help" or flag == "-h" then
      print(USAGE)
      os.exit(0)
    end
    local key = flag:match("^%-%-([%w-]+)$")
    key = key and key:gsub("-", "_")
    if key == nil or opts[key] == nil then
      io.stderr:write(("unknown option '%s'\n%s\n"):format(flag, USAGE))
      os.exit(2)
    end
    local value = tonumber(argv[i + 1])
    if value == nil then
      io.stderr:write(("option %s needs a number\n"):format(flag))
      os.exit(2)
    end
    opts[key] = math.type(opts[key]) == "integer" and math.tointeger(value)
      or value
    if opts[key] == nil then
      io.stderr:write(("option %s needs an integer\n"):format(flag))
      os.exit(2)
    end
    i = i + 2
  end
  return opts
end

local here = (arg and arg[0] or ""):match("^(.*/)") or "examples/"
local Policy = dofile(here .. "cartpole_policy.lua")

-- The smallest float32 step, as the tutorial's np.finfo(np.float32).eps.
local EPS = 2.0 ^ -23

local function select_action(policy, state, saved_log_probs)
  local probs = policy(state:unsqueeze(1))
  local m = Categorical(probs)
  local action = m:sample()
  saved_log_probs[#saved_log_probs + 1] = m:log_prob(action)
  return action:item()
end

-- One policy-gradient step from an episode's rewards and log-probabilities.
local function finish_episode(optimizer, rewards, saved_log_probs, gamma)
  local returns, R = {}, 0.0
  for i = #rewards, 1, -1 do
    R = rewards[i] + gamma * R
    returns[i] = R
  end
  local r = T.tensor(returns)
  if #returns > 1 then
    r = (r - r:mean()) / (r:std() + EPS)
  else
    r = r - r:mean()
  end
  local losses = T.cat(saved_log_probs) * -r
  optimizer:zero_grad()
  losses:sum():backward()
  optimizer:step()
end

local function main(argv)
  local opts = parse_args(argv)
  T.manual_seed(opts.seed)
  local env = ember.envs.make("CartPole-v1", { seed = opts.seed })
  local policy = Policy()
  local optimizer = optim.Adam(policy:parameters(), { lr = opts.lr })
  local running_reward = 0
  local start = ember.clock()
  print(("This will run until the running reward passes %g (at most %d "
    .. "episodes)."):format(env.reward_threshold, opts.max_episodes))
  for episode = 1, opts.max_episodes do
    local state, rewards, saved_log_probs = env:reset(), {}, {}
    for _ = 1, 10000 do
      local action = select_action(policy, state, saved_log_probs)
      local reward, done
      state, reward, done = env:step(action)
      rewards[#rewards + 1] = reward
      if done then break end
    end
    local ep_reward = #rewards
    running_reward = 0.05 * ep_reward + (1 - 0.05) * running_reward
    finish_episode(optimizer, rewards, saved_log_probs, opts.gamma)
    if episode % opts.log_interval == 0 then
      print(("Episode %d\tLast reward: %.2f\tAverage reward: %.2f")
        :format(episode, ep_reward, running_reward))
    end
    if running_reward > env.reward_threshold then
      print(("Solved! Running reward is now %.2f and the last episode runs "
        .. "to %d time steps: episode %d, %.1f s."):format(running_reward,
        ep_reward, episode, ember.clock() - start))
      return 0
    end
  end
  print(("Not solved in %d episodes (running reward %.2f, %.1f s).")
    :format(opts.max_episodes, running_reward, ember.clock() - start))
  return 1
end

os.exit(main(arg or {}))
