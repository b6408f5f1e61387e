-- ember.envs and CartPole-v1, checked against gym's physics: the trajectories
-- in fixtures/cartpole_trajectories.lua come from an independent Python
-- transcription of gym (fixtures/cartpole_reference.py).
local envs = require "ember.envs"
local cartpole = require "ember.envs.cartpole"

local spec_dir = debug.getinfo(1, "S").source:match("^@(.*)[/\\]") or "."
local trajectories = dofile(spec_dir .. "/fixtures/cartpole_trajectories.lua")

local THETA_MAX = 12 * 2 * math.pi / 360

-- An observation's four values as a Lua table, tensor or not.
local function values_of(obs)
  return { obs[1], obs[2], obs[3], obs[4] }
end

local function error_of(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  return tostring(err)
end

local function assert_contains(haystack, needle)
  assert(haystack:find(needle, 1, true),
    ("expected %q in the message %q"):format(needle, haystack))
end

-- Observations are float32: equal to the double state up to float rounding.
local function assert_observation(obs, state, where)
  local v = values_of(obs)
  for i = 1, 4 do
    local tol = 1e-6 * math.max(1, math.abs(state[i]))
    assert(math.abs(v[i] - state[i]) <= tol,
      ("%s: observation[%d] = %.17g, state = %.17g"):format(
        where or "obs", i, v[i], state[i]))
  end
end

local function fresh(seed)
  local env = envs.make("CartPole-v1", { seed = seed or 1 })
  env:reset()
  return env
end

-- gym's balancing benchmark policy used by the reference fixture.
local function balance(s)
  local u = 0.1 * s[1] + 0.5 * s[2] + 10.0 * s[3] + 2.0 * s[4]
  return u > 0 and 2 or 1
end

describe("ember.envs", function()
  it("makes CartPole-v1 with gym's attributes", function()
    local env = envs.make("CartPole-v1", { seed = 543 })
    assert.equal("CartPole-v1", env.id)
    assert.equal(475.0, env.reward_threshold)
    assert.equal(500, env.max_episode_steps)
    assert.same({ n = 2, start = 1 }, env.action_space)
    assert.same({ 4 }, env.observation_space.shape)
    local high = env.observation_space.high
    assert.equal(4.8, high[1])
    assert.equal(math.huge, high[2])
    assert.near(24 * math.pi / 180, high[3], 1e-15)
    assert.equal(math.huge, high[4])
    assert.equal(0, env.steps)
    assert.is_nil(env.state)
    assert.equal(9.8, env.gravity)
    assert.equal(1.0, env.masscart)
    assert.equal(0.1, env.masspole)
    assert.near(1.1, env.total_mass, 1e-15)
    assert.equal(0.5, env.length)
    assert.near(0.05, env.polemass_length, 1e-15)
    assert.equal(10.0, env.force_mag)
    assert.equal(0.02, env.tau)
    assert.equal(2.4, env.x_threshold)
    assert.equal(THETA_MAX, env.theta_threshold_radians)
  end)

  it("registers CartPole-v1 by module name, and cartpole.new builds it too",
    function()
      assert.equal("ember.envs.cartpole", envs.registry["CartPole-v1"])
      local env = cartpole.new({ seed = 3 })
      assert.equal("CartPole-v1", env.id)
      assert.same(values_of(envs.make("CartPole-v1", { seed = 3 }):reset()),
        values_of(env:reset()))
    end)

  it("names an unknown environment and lists the known ones", function()
    local err = error_of(envs.make, "CartPole-v0")
    assert_contains(err, '"CartPole-v0"')
    assert_contains(err, "unknown environment")
    assert_contains(err, "CartPole-v1")
    err = error_of(envs.make, nil)
    assert_contains(err, "unknown environment nil")
    assert_contains(err, "CartPole-v1")
  end)

  it("registers more environments: constructors and modules", function()
    local made
    envs.register("Test-ctor-v0", function(opts)
      made = opts
      return { kind = "ctor" }
    end)
    envs.register("Test-module-v0", {
      new = function(opts) return { kind = "module", opts = opts } end,
    })
    local ok, err = pcall(function()
      assert.same({ kind = "ctor" }, envs.make("Test-ctor-v0", { a = 1 }))
      assert.same({ a = 1 }, made)
      assert.equal("module", envs.make("Test-module-v0").kind)
      assert_contains(error_of(envs.make, "Nope"), "Test-ctor-v0")
    end)
    envs.registry["Test-ctor-v0"] = nil
    envs.registry["Test-module-v0"] = nil
    assert(ok, err)
    assert_contains(error_of(envs.register, "X", 42), "constructor")
    assert_contains(error_of(envs.register, "", "m"), "name")
    assert_contains(error_of(envs.register, "X", {}), "new(opts)")
    assert.is_nil(envs.registry.X)
  end)

  it("rejects bad options", function()
    assert_contains(error_of(envs.make, "CartPole-v1", { sed = 1 }),
      'unknown option "sed"')
    assert_contains(error_of(envs.make, "CartPole-v1", 5),
      "options must be a table")
    assert_contains(error_of(envs.make, "CartPole-v1", { seed = 1.5 }),
      "seed must be an integer")
    assert_contains(error_of(envs.make, "CartPole-v1", { seed = "7" }),
      "seed must be an integer")
    assert_contains(
      error_of(envs.make, "CartPole-v1", { max_episode_steps = 0 }),
      "max_episode_steps must be a positive integer")
  end)

  it("shows itself with tostring", function()
    local env = envs.make("CartPole-v1", { seed = 543 })
    assert_contains(tostring(env), "CartPole-v1(steps=0, state=nil")
    env:reset()
    env:step(1)
    local s = tostring(env)
    assert_contains(s, "steps=1")
    assert_contains(s, "seed=543")
  end)
end)

describe("CartPole-v1 actions", function()
  it("accepts 1, 2, integral floats and objects with :item()", function()
    local env = fresh()
    for _, a in ipairs({ 1, 2, 1.0, 2.0 }) do
      local _, reward = env:step(a)
      assert.equal(1.0, reward)
    end
    local item = setmetatable({}, { __index = { item = function() return 2 end } })
    local before = env.state
    env:step(item)
    assert.equal(5, env.steps)
    -- 2 pushes right: with the same state, action 2 gives a larger x_dot.
    env.state = before
    env:step(1)
    local left = env.state
    env.state = before
    env:step(2)
    assert.is_true(env.state[2] > left[2])
  end)

  it("rejects anything else, naming it, and does not step", function()
    local env = fresh()
    local state = env.state
    local bad = {
      { 0, "invalid action 0" },
      { 3, "invalid action 3" },
      { -1, "invalid action -1" },
      { 1.5, "invalid action 1.5" },
      { 0 / 0, "invalid action" },
      { math.huge, "invalid action inf" },
      { "1", 'invalid action "1" (a string)' },
      { true, "invalid action true" },
      { {}, "(a table)" },
      { setmetatable({}, { __index = { item = function() return 3 end } }),
        "invalid action 3 (the item of" },
      { setmetatable({}, { __index = { item = function() return 1.5 end } }),
        "invalid action 1.5 (the item of" },
      { setmetatable({}, { __index = { item = function() error("2 elements") end } }),
        "2 elements" },
    }
    for _, case in ipairs(bad) do
      local err = error_of(env.step, env, case[1])
      assert_contains(err, case[2])
      assert_contains(err, "valid actions are 1 (push left) and 2 (push right)")
    end
    local err = error_of(env.step, env, nil)
    assert_contains(err, "invalid action nil")
    assert_contains(err, "valid actions are 1 (push left) and 2 (push right)")
    assert.equal(state, env.state)
    assert.equal(0, env.steps)
  end)

  it("reports a bad action at the caller's line", function()
    local env = fresh()
    local ok, err = pcall(function() env:step(0) end)
    assert.is_false(ok)
    assert_contains(err, "envs_spec.lua:")
  end)

  it("accepts one-element tensors holding 1 or 2", function()
        local T = require "ember.tensor"
    local env = fresh()
    local _, reward = env:step(T.tensor({ 2 }))
    assert.equal(1.0, reward)
    _, reward = env:step(T.tensor({ 1.0 }))
    assert.equal(1.0, reward)
    assert_contains(error_of(env.step, env, T.tensor({ 3 })),
      "valid actions are 1 (push left) and 2 (push right)")
    assert_contains(error_of(env.step, env, T.tensor({ 0 })),
      "invalid action 0")
  end)
end)

describe("CartPole-v1 seeding and reset", function()
  local function resets(env, n)
    local out = {}
    for i = 1, n do
      env:reset()
      out[i] = { table.unpack(env.state) }
    end
    return out
  end

  it("gives the same resets for the same seed", function()
    local a = resets(envs.make("CartPole-v1", { seed = 543 }), 20)
    local b = resets(envs.make("CartPole-v1", { seed = 543 }), 20)
    assert.same(a, b)
    assert.are_not.same(a[1], a[2])
  end)

  it("gives different resets for different seeds, and without a seed",
    function()
      local a = resets(envs.make("CartPole-v1", { seed = 1 }), 3)
      local b = resets(envs.make("CartPole-v1", { seed = 2 }), 3)
      assert.are_not.same(a, b)
      local c = resets(envs.make("CartPole-v1"), 3)
      local d = resets(envs.make("CartPole-v1"), 3)
      assert.are_not.same(c, d)
    end)

  it("reseeds with env:seed(n)", function()
    local env = envs.make("CartPole-v1", { seed = 7 })
    local first = resets(env, 5)
    assert.same({ 7 }, env:seed(7))
    assert.same(first, resets(env, 5))
    env:seed(543)
    assert.same(resets(envs.make("CartPole-v1", { seed = 543 }), 5),
      resets(env, 5))
    local auto = env:seed()
    assert.equal("integer", math.type(auto[1]))
    assert_contains(error_of(env.seed, env, "x"), "seed must be an integer")
  end)

  it("draws each component uniformly in [-0.05, 0.05)", function()
    local env = envs.make("CartPole-v1", { seed = 99 })
    local lo, hi, sum, n = { 1, 1, 1, 1 }, { -1, -1, -1, -1 }, 0, 0
    for _ = 1, 2000 do
      env:reset()
      for i = 1, 4 do
        local v = env.state[i]
        assert.equal("float", math.type(v))
        assert(v >= -0.05 and v < 0.05, "out of range: " .. v)
        lo[i] = math.min(lo[i], v)
        hi[i] = math.max(hi[i], v)
        sum, n = sum + v, n + 1
      end
    end
    for i = 1, 4 do
      assert(lo[i] < -0.049 and hi[i] > 0.049, "range not covered")
    end
    assert(math.abs(sum / n) < 0.002, "mean far from 0: " .. sum / n)
  end)

  it("starts a new episode: steps = 0 and the observation is the state",
    function()
      local env = envs.make("CartPole-v1", { seed = 5 })
      env:reset()
      env:step(1)
      env:step(2)
      assert.equal(2, env.steps)
      local obs = env:reset()
      assert.equal(0, env.steps)
      assert.equal(4, #env.state)
      assert_observation(obs, env.state, "reset")
    end)

  it("returns observations that do not alias env.state", function()
    local env = fresh()
    local obs = env:reset()
    local saved = { table.unpack(env.state) }
    if type(obs) == "table" then obs[1] = 123 end
    assert.same(saved, env.state)
    assert.are_not.equal(obs, env.state)
  end)

  it("returns float32 tensors of shape {4}", function()
        local env = fresh()
    local obs = env:reset()
    assert.same({ 4 }, obs:size())
    assert.equal("float32", obs:dtype())
    assert.equal("number", type(obs[1]))
    assert_observation(obs, env.state, "reset")
    obs = env:step(2)
    assert.same({ 4 }, obs:size())
    assert.equal("float32", obs:dtype())
    assert_observation(obs, env.state, "step")
  end)
end)

describe("CartPole-v1 step", function()
  it("refuses to step before reset", function()
    local env = envs.make("CartPole-v1", { seed = 1 })
    assert_contains(error_of(env.step, env, 1), "before reset()")
    env.state = { 0, 0, 0, 0 }
    assert_contains(error_of(env.step, env, 1), "call env:reset() first")
  end)

  it("returns state, reward, done, info (old gym API)", function()
    local env = fresh()
    local obs, reward, done, info, extra = env:step(1)
    assert_observation(obs, env.state, "step")
    assert.equal(1.0, reward)
    assert.is_false(done)
    assert.same({ truncated = false }, info)
    assert.is_nil(extra)
    assert.equal(1, env.steps)
  end)

  it("integrates from a written env.state (gym's equations by hand)",
    function()
      local env = fresh()
      env.state = { 0, 0, 0, 0 }
      env:step(2)
      -- theta = 0: sin = 0, cos = 1.
      local temp = 10 / 1.1
      local thetaacc = -temp / (0.5 * (4 / 3 - 0.1 / 1.1))
      local xacc = temp - 0.05 * thetaacc / 1.1
      local want = { 0, 0.02 * xacc, 0, 0.02 * thetaacc }
      for i = 1, 4 do assert.near(want[i], env.state[i], 1e-12) end
      env.state = { 0, 0, 0, 0 }
      env:step(1)
      for i = 1, 4 do assert.near(-want[i], env.state[i], 1e-12) end
      -- Euler uses the old velocities: x moves by tau * old x_dot.
      env.state = { 0.1, 0.5, 0.02, -0.3 }
      env:step(2)
      assert.near(0.1 + 0.02 * 0.5, env.state[1], 1e-15)
      assert.near(0.02 + 0.02 * -0.3, env.state[3], 1e-15)
    end)

  it("replaces env.state with a new table each step", function()
    local env = fresh()
    local mine = { 0.01, 0.02, 0.03, 0.04 }
    env.state = mine
    env:step(1)
    assert.same({ 0.01, 0.02, 0.03, 0.04 }, mine)
    assert.are_not.equal(mine, env.state)
  end)

  it("names the problem with a bad env.state", function()
    local env = fresh()
    local cases = {
      { { 1, 2, 3 }, "got a table of length 3" },
      { { 1, 2, 3, 4, 5 }, "got a table of length 5" },
      { {}, "got a table of length 0" },
      { { 1, "a", 3, 4 }, 'env.state[2] must be a finite number, got "a"' },
      { { 1, 2, 3, true }, "env.state[4] must be a finite number, got true" },
      { "abcd", "env.state must be a table of 4 numbers" },
      { 7, "env.state must be a table of 4 numbers" },
    }
    for _, case in ipairs(cases) do
      env.state = case[1]
      assert_contains(error_of(env.step, env, 1), case[2])
    end
    env.state = nil
    assert_contains(error_of(env.step, env, 1), "got nil")
    assert.equal(0, env.steps)
  end)

  it("accepts integers in a written env.state, keeps doubles", function()
    local env = fresh()
    env.state = { 0, 1, 0, 0 }
    env:step(2)
    assert.near(0.02, env.state[1], 1e-15)
    for i = 1, 4 do assert.equal("float", math.type(env.state[i])) end
  end)
end)

describe("CartPole-v1 termination", function()
  -- With zero velocities the position and angle do not move in one Euler
  -- step, so these land exactly where they are set.
  local function step_from(state, action)
    local env = fresh()
    env.state = state
    local _, reward, done, info = env:step(action or 1)
    return done, reward, info, env
  end

  it("ends past x = +-2.4, not at it", function()
    assert.is_false((step_from({ 2.4, 0, 0, 0 })))
    assert.is_false((step_from({ -2.4, 0, 0, 0 })))
    assert.is_true((step_from({ 2.4 + 1e-9, 0, 0, 0 })))
    assert.is_true((step_from({ -2.4 - 1e-9, 0, 0, 0 })))
    -- Moving across the edge in one step.
    assert.is_false((step_from({ 2.39, 0.4, 0, 0 }, 2)))
    assert.is_true((step_from({ 2.39, 0.6, 0, 0 }, 2)))
    assert.is_true((step_from({ -2.39, -0.6, 0, 0 }, 1)))
  end)

  it("ends past theta = +-12 degrees, not at it", function()
    assert.is_false((step_from({ 0, 0, THETA_MAX, 0 })))
    assert.is_false((step_from({ 0, 0, -THETA_MAX, 0 })))
    assert.is_true((step_from({ 0, 0, THETA_MAX + 1e-9, 0 })))
    assert.is_true((step_from({ 0, 0, -THETA_MAX - 1e-9, 0 })))
    -- Turning across the edge in one step (theta moves by tau * theta_dot).
    assert.is_false((step_from({ 0, 0, 0.19, 0.5 })))
    assert.is_true((step_from({ 0, 0, 0.19, 1.0 })))
    assert.is_false((step_from({ 0, 0, -0.19, -0.5 })))
    assert.is_true((step_from({ 0, 0, -0.19, -1.0 })))
  end)

  it("rewards the failing step with 1.0 and marks it not truncated",
    function()
      local done, reward, info = step_from({ 3, 0, 0, 0 })
      assert.is_true(done)
      assert.equal(1.0, reward)
      assert.is_false(info.truncated)
      assert.is_nil(info["TimeLimit.truncated"])
      assert.is_nil(info.after_done)
    end)

  it("returns reward 0.0, done and info.after_done after done, silently",
    function()
      local done, _, _, env = step_from({ 3, 0, 0, 0 })
      assert.is_true(done)
      local printed = {}
      local real_print, real_write = print, io.write
      _G.print = function(...) printed[#printed + 1] = { ... } end
      io.write = function(...) printed[#printed + 1] = { ... } end
      local ok, err = pcall(function()
        for i = 1, 3 do
          local before = env.state
          local obs, reward, d, info = env:step(2)
          assert.equal(0.0, reward)
          assert.is_true(d)
          assert.is_true(info.after_done)
          assert.equal(1 + i, env.steps)
          -- The physics goes on, as in gym.
          assert.are_not.same(before, env.state)
          assert_observation(obs, env.state, "after done")
        end
      end)
      _G.print, io.write = real_print, real_write
      assert(ok, err)
      assert.same({}, printed)
      env:reset()
      local _, reward, d, info = env:step(1)
      assert.equal(1.0, reward)
      assert.is_false(d)
      assert.is_nil(info.after_done)
    end)
end)

describe("CartPole-v1 time limit", function()
  it("ends the 500th step, truncated, when the pole stays up", function()
    local env = fresh()
    for t = 1, 499 do
      env.state = { 0, 0, 0, 0 }
      local _, reward, done, info = env:step(t % 2 + 1)
      assert.equal(1.0, reward)
      assert(not done, "done early at step " .. t)
      assert.is_false(info.truncated)
      assert.is_nil(info["TimeLimit.truncated"])
    end
    env.state = { 0, 0, 0, 0 }
    local _, reward, done, info = env:step(1)
    assert.equal(500, env.steps)
    assert.equal(1.0, reward)
    assert.is_true(done)
    assert.is_true(info.truncated)
    assert.is_true(info["TimeLimit.truncated"])
    local _, r2, d2, info2 = env:step(1)
    assert.equal(0.0, r2)
    assert.is_true(d2)
    assert.is_true(info2.after_done)
  end)

  it("is not truncation when the 500th step also fails", function()
    local env = fresh()
    for _ = 1, 499 do
      env.state = { 0, 0, 0, 0 }
      env:step(1)
    end
    env.state = { 3, 0, 0, 0 }
    local _, reward, done, info = env:step(1)
    assert.is_true(done)
    assert.equal(1.0, reward)
    assert.is_false(info.truncated)
    assert.is_false(info["TimeLimit.truncated"])
  end)

  it("lets a balancing controller reach 500 from a seeded reset", function()
    local env = envs.make("CartPole-v1", { seed = 543 })
    local total, done, info = 0, false, nil
    env:reset()
    while not done do
      local reward
      _, reward, done, info = env:step(balance(env.state))
      total = total + reward
    end
    assert.equal(500, total)
    assert.is_true(total >= env.reward_threshold)
    assert.is_true(info.truncated)
  end)

  it("follows max_episode_steps and restarts on reset", function()
    local env = envs.make("CartPole-v1", { seed = 1, max_episode_steps = 3 })
    for _ = 1, 2 do
      env:reset()
      assert.is_false(select(3, env:step(balance(env.state))))
      assert.is_false(select(3, env:step(balance(env.state))))
      local _, _, done, info = env:step(balance(env.state))
      assert.is_true(done)
      assert.is_true(info.truncated)
    end
  end)
end)

describe("CartPole-v1 against the gym reference", function()
  it("has reference trajectories covering every way to end", function()
    assert(#trajectories >= 5, "too few trajectories")
    local reasons, longest = {}, 0
    for _, tr in ipairs(trajectories) do
      if tr.reason then reasons[tr.reason] = true end
      longest = math.max(longest, #tr.states)
      assert.equal(#tr.actions, #tr.states)
      assert.equal(#tr.actions, #tr.dones)
    end
    for _, r in ipairs({ "x>2.4", "x<-2.4", "theta>12deg", "theta<-12deg",
      "time limit" }) do
      assert(reasons[r], "no reference trajectory ends by " .. r)
    end
    assert(longest >= 200, "no long trajectory")
  end)

  for _, tr in ipairs(trajectories) do
    it(("matches to 1e-6: %s (%d steps)"):format(tr.name, #tr.states),
      function()
        local env = envs.make("CartPole-v1", { seed = 0 })
        env:reset()
        env.state = { table.unpack(tr.start) }
        for t, action in ipairs(tr.actions) do
          local obs, reward, done, info = env:step(action)
          local want = tr.states[t]
          for i = 1, 4 do
            local got = env.state[i]
            assert(math.abs(got - want[i]) <= 1e-6,
              ("%s, step %d, component %d: got %.17g, want %.17g"):format(
                tr.name, t, i, got, want[i]))
          end
          assert_observation(obs, want, ("%s, step %d"):format(tr.name, t))
          assert.equal(1.0, reward)
          assert(done == tr.dones[t], ("%s, step %d: done = %s, want %s")
            :format(tr.name, t, tostring(done), tostring(tr.dones[t])))
          if done then
            assert.equal(tr.reason == "time limit", info.truncated)
          end
        end
        assert.equal(#tr.actions, env.steps)
      end)
  end
end)
