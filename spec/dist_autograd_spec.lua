-- Distributed autograd and the distributed optimizer across worker
-- processes: the tutorial's RNN split over three workers trains exactly as
-- it does in one process; contexts and RRefs are freed everywhere; a worker
-- that dies fails the backward with its name; and the API's rules on one
-- worker.
local world = require "spec.support.world"

local function run_world(case, n, opts)
  opts = opts or {}
  opts.worker = "spec/fixtures/rpc/dist_autograd.lua"
  return world.run(case, n, opts)
end
local describe_world, assert_all_ok = world.describe, world.assert_all_ok

describe("dist_autograd", function()
  it("splits the RNN over 3 workers with the gradients and steps of one process",
    function()
      local w = run_world("equal_to_local", 3)
      assert_all_ok(w)
      local r = w[0].results
      local text = describe_world(w)
      -- Embedding (1) + decoder (2) + a 2-layer LSTM (8).
      assert.equal("11", r.n_params, text)
      assert.is_true(tonumber(r.loss_diff) <= 1e-6, text)
      assert.is_true(tonumber(r.grad_diff) <= 1e-6, text)
      assert.is_true(tonumber(r.param_diff) <= 1e-6, text)
      assert.is_true(tonumber(r.emb_moved) > 1e-3, text)
      assert.is_true(tonumber(r.loss_2) < tonumber(r.loss_1), text)
      -- Gradients went into the context, not .grad.
      assert.equal("nil", r.lstm_grad_untouched, text)
    end)

  it("frees contexts, sends and RRefs on every worker over 100 iterations",
    function()
      local w = run_world("no_leaks", 3, { timeout = 120 })
      assert_all_ok(w)
      local r = w[0].results
      local text = describe_world(w)
      -- The model's RRefs (2 modules, 3 remote parameters, 2 optimizers)
      -- stay while it lives; nothing made per iteration does.
      assert.equal("contexts=0,forks=7,owners=7,pending=0,sends=0,users=7",
        r.after_2, text)
      assert.equal(r.after_2, r.after_100, text)
      assert.equal("contexts=0,forks=0,owners=0,pending=0,sends=0,users=0",
        r.dropped, text)
      assert.matches("use dist_autograd.backward%(ctx, {loss}%)",
        r.plain_backward, 1, false)
    end)

  it("fails the backward at once, naming the worker that died", function()
    local w = run_world("worker_dies", 3)
    local text = describe_world(w)
    assert.equal(0, w[0].status, text)
    assert.equal(0, w[1].status, text)
    assert.equal(7, w[2].status, text) -- it exited on purpose
    local r = w[0].results
    assert.matches("^dist_autograd.backward: worker 'emb' failed its part of " ..
      "the backward pass: .*worker 'dec' %(id 2%) was lost", r.error)
    assert.equal("EPEERLOST", r.error_code, text)
    assert.is_true(tonumber(r.seconds) < 1, text)
    assert.equal("42", r.emb_alive, text)
    assert.equal("0", r.contexts, text)
  end)

  it("keeps PyTorch's rules across workers", function()
    local w = run_world("rules", 3)
    assert_all_ok(w)
    local r = w[0].results
    local text = describe_world(w)
    -- Received in context X, used in Y: q's gradient in Y, x's in X.
    assert.equal("1.0,2.0", r.cross_q_in_y, text)
    assert.equal("nil", r.cross_x_in_y)
    assert.equal("10.0,20.0", r.cross_x_in_x)
    assert.equal("3.0,3.0", r.packed_grad)
    assert.equal("6.0,6.0", r.twice_retained)
    assert.matches("roots%[1%] already ran a backward pass in this context; " ..
      "pass retain_graph=true", r.third_time)
    assert.equal("4.0,8.0", r.rref_retained) -- 2W, twice
    assert.equal("0,0,0", r.late_contexts)
    assert.matches("context 0:%d+ is closed on worker 'emb'; a call made in " ..
      "it after it closed is refused", r.refused)
    assert.matches("^DistributedOptimizer: making the optimizer on worker " ..
      "'emb': .*SGD: invalid lr %-1", r.bad_option)
    assert.matches("^DistributedOptimizer:step: the optimizer on worker 'emb' " ..
      "failed: no distributed autograd context 0:%d+ on this worker", r.closed_step)
  end)

  it("keeps its rules on one worker", function()
    local w = run_world("api", 1)
    assert_all_ok(w)
    local r = w[0].results
    local text = describe_world(w)
    assert.equal("true", r.current_is_ctx, text)
    assert.equal("integer", r.ctx_id_integer)
    assert.matches("already in context 0:1; close it first", r.nested, 1, true)
    -- A call to the worker itself in a context: the graph stays local.
    assert.equal("2.0,4.0", r.self_call_grad)
    assert.equal("nil", r.x_grad_untouched)
    assert.equal("1,2", r.returned)
    assert.equal("nil", r.current_after)
    assert.equal("mine", r.error_passed)
    assert.equal("true", r.closed_after_error)
    assert.matches("no context 0:2 on worker 'solo' %(it was closed",
      r.gradients_of_closed)
    assert.equal("1", r.in_close_block)
    assert.equal("0", r.after_close_block)
    assert.matches("roots%[1%] is a number, not a tensor", r.bad_roots_type)
    assert.matches("roots%[1%] does not require grad", r.bad_roots_grad)
    assert.matches("roots%[1%] must have one element", r.bad_roots_shape)
    assert.matches("expected a context or its id, got string", r.bad_context)
    assert.matches("expected a function%(ctx%)", r.context_not_fn)
    -- SGD lr 0.5 on p with gradient 3; q, not reached, keeps value and .grad.
    assert.equal("-0.5,-0.5", r.stepped)
    assert.equal("5.0,5.0", r.not_reached)
    assert.equal("9.0,9.0", r.not_reached_grad)
    assert.matches("optim_class must be an optimizer constructor", r.bad_class)
    assert.matches("param_rrefs%[1%] is not an RRef %(got a tensor", r.bad_rrefs)
    assert.matches("step: expected a context or its id, got string", r.bad_step)
    assert.equal("5.0,5.0", r.rref_backward_local)
    assert.matches("the value is a string, not a tensor", r.rref_backward_not_tensor)
    -- Functions of a class held by a global are found by reference.
    assert.equal("42", r.class_function)
    assert.equal("-1.0", r.param_after_close)
    assert.equal("0", r.contexts_end)
  end)
end)
