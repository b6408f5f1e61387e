-- CartPole-v1: gym's classic-control cart-pole (Barto, Sutton & Anderson),
-- in pure Lua, with the old gym API and the TimeLimit(500) wrapper built in.
--
--   local env = require("ember.envs").make("CartPole-v1", {seed = 543})
--   local state = env:reset()                     -- float32 tensor of shape {4}
--   local state, reward, done, info = env:step(2) -- 1 pushes left, 2 right
--
-- Differences from gym, all deliberate:
--   * actions are 1 (push left) and 2 (push right): ember is 1-based;
--   * stepping after done prints nothing (gym logs a warning); it still
--     integrates the physics, as gym does, and returns reward 0.0, done =
--     true and info.after_done = true, until the next reset;
--   * the reset noise comes from the env's own xoshiro256** generator, so
--     seeds do not reproduce numpy's streams, only our own.
local cartpole = {}

local CartPole = {}
CartPole.__index = CartPole
cartpole.CartPole = CartPole

local ID = "CartPole-v1"
local MAX_EPISODE_STEPS = 500
local X_THRESHOLD = 2.4
local THETA_THRESHOLD_RADIANS = 12 * 2 * math.pi / 360

---------------------------------------------------------------------------
-- A small deterministic generator: xoshiro256**, seeded through splitmix64
-- (the seeding its authors recommend). Lua 5.4 integers are 64-bit and wrap,
-- which is exactly the arithmetic these need.

local function rotl(x, k)
  return (x << k) | (x >> (64 - k))
end

local function splitmix64(state)
  state = state + 0x9E3779B97F4A7C15
  local z = state
  z = (z ~ (z >> 30)) * 0xBF58476D1CE4E5B9
  z = (z ~ (z >> 27)) * 0x94D049BB133111EB
  return state, z ~ (z >> 31)
end

local function rng_new(seed)
  local s, a, b, c, d = seed
  s, a = splitmix64(s)
  s, b = splitmix64(s)
  s, c = splitmix64(s)
  s, d = splitmix64(s)
  return { a, b, c, d }
end

-- A double uniform in [0, 1) from the top 53 bits of the next output.
local function rng_uniform(r)
  local s0, s1, s2, s3 = r[1], r[2], r[3], r[4]
  local result = rotl(s1 * 5, 7) * 9
  local t = s1 << 17
  s2 = s2 ~ s0
  s3 = s3 ~ s1
  s1 = s1 ~ s2
  s0 = s0 ~ s3
  s2 = s2 ~ t
  s3 = rotl(s3, 45)
  r[1], r[2], r[3], r[4] = s0, s1, s2, s3
  return (result >> 11) * 0x1p-53
end

-- Seeds for envs made without one: the clock, a counter (two envs made in
-- the same second differ) and a fresh table's address (so do two processes).
local auto_seeds = 0
local function auto_seed()
  auto_seeds = auto_seeds + 1
  local address = tonumber(tostring({}):match("0x(%x+)") or "0", 16) or 0
  local _, mixed = splitmix64(os.time() ~ (auto_seeds << 32) ~ address)
  return mixed
end

local function check_seed(seed, fname)
  local n = math.type(seed) and math.tointeger(seed)
  if not n then
    error(("%s: seed must be an integer, got %s (%s)"):format(
      fname, tostring(seed), type(seed)), 3)
  end
  return n
end

---------------------------------------------------------------------------
-- Observations are float32 tensors, as DESIGN.md says.

local T = require "ember.tensor"

-- A float32 tensor of shape {4}.
local function to_observation(s)
  return T.tensor({ s[1], s[2], s[3], s[4] }, { dtype = "float32" })
end

---------------------------------------------------------------------------
-- Argument checks.

local function describe_value(v)
  if type(v) == "string" then return ("%q (a string)"):format(v) end
  if type(v) == "number" or type(v) == "nil" or type(v) == "boolean" then
    return tostring(v)
  end
  local s = tostring(v)
  if #s > 60 then s = s:sub(1, 57) .. "..." end
  return ("%s (a %s)"):format(s, type(v))
end

local function bad_action(shown)
  error(("CartPole: invalid action %s; valid actions are 1 (push left) and "
    .. "2 (push right)"):format(shown), 4)
end

-- The action as the integer 1 or 2. Accepts numbers (1.0 too) and objects
-- with :item(), such as a one-element tensor or a Categorical sample.
local function check_action(a)
  local v, from_item = a, false
  if type(a) == "table" or type(a) == "userdata" then
    local ok, item = pcall(function() return a:item() end)
    if not ok then
      bad_action(describe_value(a) .. " (it has no usable :item(): "
        .. tostring(item) .. ")")
    end
    v, from_item = item, true
  end
  local n = math.type(v) and math.tointeger(v)
  if n == 1 or n == 2 then return n end
  if from_item then
    bad_action(("%s (the item of %s)"):format(describe_value(v),
      describe_value(a)))
  end
  bad_action(describe_value(a))
end

-- env.state as four numbers, checked, since users may write it.
local function read_state(state)
  if type(state) ~= "table" then
    error(("CartPole: env.state must be a table of 4 numbers {x, x_dot, "
      .. "theta, theta_dot}, got %s"):format(describe_value(state)), 3)
  end
  local n = #state
  if n ~= 4 or state[5] ~= nil then
    error(("CartPole: env.state must hold exactly 4 numbers {x, x_dot, "
      .. "theta, theta_dot}, got a table of length %d"):format(n), 3)
  end
  for i = 1, 4 do
    local v = state[i]
    -- NaN and infinities are no physical state: the episode would run on
    -- garbage and never end by the angle or position limits.
    if type(v) ~= "number" or v ~= v or v == math.huge or v == -math.huge then
      error(("CartPole: env.state[%d] must be a finite number, got %s"):format(
        i, describe_value(state[i])), 3)
    end
  end
  return state[1], state[2], state[3], state[4]
end

---------------------------------------------------------------------------
-- The environment.

local known_options = { seed = true, max_episode_steps = true }

-- cartpole.new(opts): a new CartPole-v1. opts.seed (integer) seeds the reset
-- noise; opts.max_episode_steps overrides the 500-step limit.
function cartpole.new(opts)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then
    error("CartPole: options must be a table, got " .. type(opts), 2)
  end
  for k in pairs(opts) do
    if not known_options[k] then
      local shown = type(k) == "string" and ("%q"):format(k) or tostring(k)
      error(("CartPole: unknown option %s (known: max_episode_steps, seed)")
        :format(shown), 2)
    end
  end
  local max_steps = MAX_EPISODE_STEPS
  if opts.max_episode_steps ~= nil then
    local m = opts.max_episode_steps
    max_steps = math.type(m) and math.tointeger(m)
    if not max_steps or max_steps < 1 then
      error("CartPole: max_episode_steps must be a positive integer, got "
        .. describe_value(opts.max_episode_steps), 2)
    end
  end

  local env = setmetatable({
    id = ID,
    -- Physics constants, as gym's attributes (step reads them from here).
    gravity = 9.8,
    masscart = 1.0,
    masspole = 0.1,
    length = 0.5, -- half the pole's length
    force_mag = 10.0,
    tau = 0.02, -- seconds between state updates
    kinematics_integrator = "euler",
    theta_threshold_radians = THETA_THRESHOLD_RADIANS,
    x_threshold = X_THRESHOLD,
    max_episode_steps = max_steps,
    reward_threshold = 475.0,
    -- Twice the failure thresholds, so failing states are still inside.
    observation_space = {
      shape = { 4 },
      dtype = "float32",
      low = { -X_THRESHOLD * 2, -math.huge, -THETA_THRESHOLD_RADIANS * 2,
        -math.huge },
      high = { X_THRESHOLD * 2, math.huge, THETA_THRESHOLD_RADIANS * 2,
        math.huge },
    },
    action_space = { n = 2, start = 1 },
    state = nil, -- {x, x_dot, theta, theta_dot} in Lua doubles, after reset
    steps = 0, -- steps taken this episode
    _was_reset = false,
    _done = false,
  }, CartPole)
  env.total_mass = env.masspole + env.masscart
  env.polemass_length = env.masspole * env.length
  env:seed(opts.seed)
  return env
end

-- env:seed([n]): reseeds the reset noise; without n, from the clock. Returns
-- {seed} as gym's seed() does.
function CartPole:seed(n)
  if n == nil then
    n = auto_seed()
  else
    n = check_seed(n, "CartPole:seed")
  end
  self._seed = n
  self._rng = rng_new(n)
  return { n }
end

-- A uniform in [low, high); redrawn in the (practically impossible) case
-- that rounding lands on high.
local function uniform(rng, low, high)
  while true do
    local v = low + (high - low) * rng_uniform(rng)
    if v < high then return v end
  end
end

-- env:reset(): a new episode; each state component uniform in [-0.05, 0.05).
function CartPole:reset()
  local rng = self._rng
  self.state = {
    uniform(rng, -0.05, 0.05), uniform(rng, -0.05, 0.05),
    uniform(rng, -0.05, 0.05), uniform(rng, -0.05, 0.05),
  }
  self.steps = 0
  self._was_reset = true
  self._done = false
  return to_observation(self.state)
end

-- env:step(action): state, reward, done, info. info.truncated is true when
-- the episode ended by the step limit and not by a failure (gym's
-- info["TimeLimit.truncated"], also set, on the limit step only).
function CartPole:step(action)
  local force_sign = check_action(action) == 2 and 1 or -1
  if not self._was_reset then
    error("CartPole: step() called before reset(); call env:reset() first", 2)
  end
  local x, x_dot, theta, theta_dot = read_state(self.state)

  -- gym's equations (see the README of classic_control/cartpole.py).
  local force = force_sign * self.force_mag
  local costheta = math.cos(theta)
  local sintheta = math.sin(theta)
  local temp = (force + self.polemass_length * theta_dot ^ 2 * sintheta)
    / self.total_mass
  local thetaacc = (self.gravity * sintheta - costheta * temp)
    / (self.length * (4.0 / 3.0 - self.masspole * costheta ^ 2
      / self.total_mass))
  local xacc = temp - self.polemass_length * thetaacc * costheta
    / self.total_mass

  if self.kinematics_integrator == "euler" then
    x = x + self.tau * x_dot
    x_dot = x_dot + self.tau * xacc
    theta = theta + self.tau * theta_dot
    theta_dot = theta_dot + self.tau * thetaacc
  else -- semi-implicit euler
    x_dot = x_dot + self.tau * xacc
    x = x + self.tau * x_dot
    theta_dot = theta_dot + self.tau * thetaacc
    theta = theta + self.tau * theta_dot
  end
  -- A new table, as gym rebinds its tuple: a caller's copy stays unchanged.
  self.state = { x, x_dot, theta, theta_dot }
  self.steps = self.steps + 1

  local info = { truncated = false }
  if self._done then
    info.after_done = true
    return to_observation(self.state), 0.0, true, info
  end
  local failed = x < -self.x_threshold or x > self.x_threshold
    or theta < -self.theta_threshold_radians
    or theta > self.theta_threshold_radians
  local done = failed
  if self.steps >= self.max_episode_steps then
    info.truncated = not failed
    info["TimeLimit.truncated"] = not failed
    done = true
  end
  self._done = done
  return to_observation(self.state), 1.0, done, info
end

-- Nothing to release; here for gym's API.
function CartPole:close() end

function CartPole:__tostring()
  local s = self.state
  local shown = "nil"
  if type(s) == "table" then
    local parts = {}
    for i = 1, #s do parts[i] = ("%.4g"):format(tonumber(s[i]) or 0 / 0) end
    shown = "{" .. table.concat(parts, ", ") .. "}"
  end
  return ("%s(steps=%d, state=%s, seed=%d)"):format(
    self.id, self.steps, shown, self._seed)
end

return cartpole
