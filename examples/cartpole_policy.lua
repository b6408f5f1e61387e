-- The policy network of the "Getting Started with Distributed RPC Framework"
-- tutorial: 4 state values -> 128 hidden units (dropout 0.6, ReLU) -> 2
-- action probabilities. Returns the Policy class:
--   local Policy = dofile("examples/cartpole_policy.lua")
local ember = require "ember"
local T = ember.tensor
local nn = ember.nn

local Policy = nn.Module:extend("Policy")

function Policy:init()
  self.affine1 = nn.Linear(4, 128)
  self.dropout = nn.Dropout(0.6)
  self.affine2 = nn.Linear(128, 2)
end

-- x: {batch, 4} states; returns {batch, 2} action probabilities.
function Policy:forward(x)
  x = self.affine1(x)
  x = self.dropout(x)
  x = T.relu(x)
  local action_scores = self.affine2(x)
  return T.softmax(action_scores, 2)
end

return Policy
