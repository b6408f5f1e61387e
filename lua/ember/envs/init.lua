-- ember.envs: reinforcement-learning environments by name, as gym.make.
--
--   local env = require("ember.envs").make("CartPole-v1", {seed = 543})
local envs = {}

-- Name -> a module name (required on first make; its new(opts) builds the
-- env), a module table with new(opts), or a constructor function(opts).
-- Module names keep `require "ember.envs"` cheap: nothing loads until make.
envs.registry = {
  ["CartPole-v1"] = "ember.envs.cartpole",
}

local function known_names()
  local names = {}
  for name in pairs(envs.registry) do names[#names + 1] = name end
  table.sort(names)
  return table.concat(names, ", ")
end

-- envs.register(name, module_or_constructor): adds (or replaces) a name.
function envs.register(name, entry)
  if type(name) ~= "string" or name == "" then
    error("ember.envs.register: name must be a non-empty string, got "
      .. tostring(name), 2)
  end
  local t = type(entry)
  local ok = t == "string" or t == "function"
    or (t == "table" and type(entry.new) == "function")
  if not ok then
    error(("ember.envs.register: %q needs a module name, a module with "
      .. "new(opts) or a constructor function, got %s"):format(name, t), 2)
  end
  envs.registry[name] = entry
end

-- envs.make(name, opts): a new env of the registered kind.
function envs.make(name, opts)
  local entry = envs.registry[name]
  if entry == nil then
    local shown = type(name) == "string" and ("%q"):format(name)
      or tostring(name) .. " (a " .. type(name) .. ")"
    error(("ember.envs.make: unknown environment %s; known environments: %s")
      :format(shown, known_names()), 2)
  end
  if type(entry) == "string" then entry = require(entry) end
  if type(entry) == "function" then return entry(opts) end
  return entry.new(opts)
end

return envs
