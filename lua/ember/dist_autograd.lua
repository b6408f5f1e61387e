-- ember.dist_autograd: autograd across RPC, as torch.distributed.autograd.
--
--   dist_autograd.context(function(ctx)
--     local loss = criterion(model(input), target) -- RPCs inside are recorded
--     dist_autograd.backward(ctx, { loss })
--     local grads = dist_autograd.get_gradients(ctx) -- {param = gradient}
--   end)
--
-- An RPC made by a task inside a context carries the context's id. Tensors
-- in it that require grad are kept in the sender's context (a "send", by
-- id) and arrive as outputs of a RecvRpcBackward node naming that send; the
-- answer is recorded the same way in the other direction. The callee runs
-- the function in the same context (created there on first use), so calls
-- it makes in turn are recorded too.
--
-- backward(ctx, roots) runs this worker's graph from the roots (C core,
-- core/dist_autograd.c): leaves' gradients go into the context, not .grad;
-- each RecvRpcBackward reached yields a gradient for a send on another
-- worker. Those go out, one call per worker, and each worker runs its graph
-- from those sends the same way, before answering. The backward returns
-- when the whole distributed graph is done, or raises the first failure,
-- naming the worker. This is PyTorch's "FAST mode": a subgraph reached from
-- several sends is walked once per send, so graphs are kept until the
-- context closes and their tensors are dropped; what retain_graph=false
-- still does is refuse a second backward from the same root.
--
-- Closing a context frees it here and, through the workers it exchanged
-- messages with, everywhere it exists.
local core = require "ember.core"
local futures = require "ember.futures"
local rpc = require "ember.rpc"

local C = core.dist_autograd
local is_tensor = core.tensor.is_tensor
local I = rpc._internal
local unpack = table.unpack

local M = {}

-- Live contexts on this worker, by id, and how many.
local contexts = {}
local live = 0
local serial = 0

-- Ids are (worker rank << 40) | serial, unique across the world.
local id_text = I.id_text

local Context = {}
Context.__index = Context
Context.__name = "ember.dist_autograd.Context"

local function worker_name(rank)
  local s = I.state()
  local info = s and s.workers[rank]
  return info and ("'" .. info.name .. "'") or ("worker " .. tostring(rank))
end

function Context.__tostring(ctx)
  return ("dist_autograd.Context(%s%s)"):format(id_text(ctx.id),
    ctx.closed and ", closed" or "")
end

local function new_context_record(id)
  local ctx = setmetatable({
    id = id,
    grads = C.grad_map(), -- this worker's leaves -> gradients
    sends = {},           -- send id -> the tensor sent
    next_send = 0,
    peers = {},           -- ranks this context exchanged messages with
    used_roots = setmetatable({}, { __mode = "k" }), -- ran without retain
    closed = false,
  }, Context)
  contexts[id] = ctx
  live = live + 1
  return ctx
end

-- The context `ctx` names (the object or its id) on this worker.
local function check_context(ctx, fname)
  I.check_state("dist_autograd." .. fname)
  local id = ctx
  if getmetatable(ctx) == Context then id = ctx.id end
  if math.type(id) ~= "integer" then
    error(("dist_autograd.%s: expected a context or its id, got %s"):format(
      fname, type(ctx)), 3)
  end
  local found = contexts[id]
  if found == nil then
    local s = I.state()
    error(("dist_autograd.%s: no context %s on worker '%s' (it was closed, " ..
      "or never used here)"):format(fname, id_text(id), s and s.name or "?"), 3)
  end
  return found
end

-- --- Calls that carry no context -------------------------------------------------

-- Runs fn(...) (which must not yield) as if the task had no context: the
-- messages of distributed autograd itself are not recorded.
local function without_context(fn, ...)
  local tasks, co = I.task_contexts, coroutine.running()
  local saved = tasks[co]
  tasks[co] = nil
  local result = table.pack(pcall(fn, ...))
  tasks[co] = saved
  if not result[1] then error(result[2], 0) end
  return unpack(result, 2, result.n)
end
M._without_context = without_context

local function call_plain(to, fn, args, opts)
  return without_context(rpc.rpc_async, to, fn, args, opts)
end

-- --- Tensors on the wire ---------------------------------------------------------

local MAX_DEPTH = 64

local function walk(v, depth, found, seen)
  if is_tensor(v) then
    if not seen[v] and v.requires_grad then
      seen[v] = true
      found[#found + 1] = v
    end
    return
  end
  if type(v) ~= "table" or seen[v] or depth > MAX_DEPTH then return end
  seen[v] = true
  -- An RRef's fields are its bookkeeping, not values that travel.
  local mt = getmetatable(v)
  if mt ~= nil and rawget(mt, "__name") == "ember.RRef" then return end
  for k, item in next, v do
    if type(k) == "table" or type(k) == "userdata" then
      walk(k, depth + 1, found, seen)
    end
    local kind = type(item)
    if kind == "table" or kind == "userdata" then
      walk(item, depth + 1, found, seen)
    end
  end
end

-- The distinct tensors in `value` that require grad, in the order found.
local function grad_tensors(value)
  local found = {}
  local kind = type(value)
  if kind == "table" or kind == "userdata" then walk(value, 0, found, {}) end
  return found
end

-- Keeps `tensors` as sends of ctx, to worker `to`; returns the first id.
local function record_sends(ctx, to, tensors)
  local first = ctx.next_send + 1
  for i, t in ipairs(tensors) do ctx.sends[first + i - 1] = t end
  ctx.next_send = ctx.next_send + #tensors
  ctx.peers[to] = true
  return first
end

-- The receiving end: each tensor becomes the output of a RecvRpcBackward
-- node for send first+i-1 of worker `from`.
local function record_recvs(ctx, from, first, tensors)
  ctx.peers[from] = true
  local done = {}
  for i, t in ipairs(tensors) do
    if not is_tensor(t) then
      error(("malformed autograd message: item %d is a %s, not a tensor"):format(
        i, type(t)), 0)
    end
    -- The same tensor twice is one payload and one object here: one node.
    if not done[t] and t.requires_grad and t.is_leaf then
      done[t] = true
      C.attach_recv(t, from, ctx.id, first + i - 1)
    end
  end
end

-- A request made in a context: {ctx=, from=, first=, tensors=, args=}
-- (its fields travel as they are).
local Request = { __name = "ember.dist_autograd.Request" }
rpc.register_class("ember.dist_autograd.Request", Request)

-- An answer to it holding tensors that require grad: unwrapped as it is
-- read, once, in the caller's context.
local Reply = { __name = "ember.dist_autograd.Reply" }
function Reply.__pack(r) return { ctx = r.ctx, from = r.from,
  first = r.first, tensors = r.tensors, value = r.value } end
function Reply.__unpack(state)
  local ctx = math.type(state.ctx) == "integer" and contexts[state.ctx] or nil
  if ctx ~= nil and math.type(state.from) == "integer" and
      math.type(state.first) == "integer" and type(state.tensors) == "table" then
    record_recvs(ctx, state.from, state.first, state.tensors)
  end
  return state.value
end
rpc.register_class("ember.dist_autograd.Reply", Reply)

local function my_rank()
  return I.state().rank
end

-- Ids of contexts released here lately: a message of one that was late
-- (sent by a task whose caller had given up) must not make it again, as
-- nothing would release it a second time.
local RELEASED_KEPT = 4096
local released, released_order = {}, {}

local function remember_released(id)
  released[id] = true
  released_order[#released_order + 1] = id
  if #released_order > RELEASED_KEPT then
    released[table.remove(released_order, 1)] = nil
  end
end

-- The context a request names, made here on its first message.
local function remote_context(id)
  if released[id] or I.id_creator(id) == my_rank() then
    error(("distributed autograd context %s is closed on worker '%s'; a " ..
      "call made in it after it closed is refused"):format(id_text(id),
      I.state().name), 0)
  end
  return new_context_record(id)
end

I.set_autograd {
  -- Caller: args of a call made in ctx to worker `to`.
  wrap_request = function(ctx, to, args)
    local tensors = grad_tensors(args)
    local first = record_sends(ctx, to, tensors)
    return setmetatable({ ctx = ctx.id, from = my_rank(), first = first,
      tensors = tensors, args = args }, Request)
  end,
  -- Callee: the context a request came with (made here on first use), and
  -- its arguments.
  receive_request = function(peer, args)
    if getmetatable(args) ~= Request then return nil, args end
    if math.type(args.ctx) ~= "integer" or math.type(args.first) ~= "integer"
        or type(args.tensors) ~= "table" or type(args.args) ~= "table" then
      error("malformed autograd message: expected {ctx=, first=, tensors=, " ..
        "args=}", 0)
    end
    local ctx = contexts[args.ctx] or remote_context(args.ctx)
    record_recvs(ctx, peer, args.first, args.tensors)
    return ctx, args.args
  end,
  -- Callee: the answer, recorded when it holds tensors that require grad.
  answer = function(ctx, peer, result)
    local tensors = grad_tensors(result)
    if #tensors == 0 or ctx.closed then return result end
    local first = record_sends(ctx, peer, tensors)
    return setmetatable({ ctx = ctx.id, from = my_rank(), first = first,
      tensors = tensors, value = result }, Reply)
  end,
}

-- --- Contexts --------------------------------------------------------------------

-- dist_autograd.current(): the context of the running task, or nil.
function M.current()
  return I.current_context()
end

-- dist_autograd.new_context(): a context for the running task, until
-- ctx:close() (or the end of a `local ctx <close> = ...` block).
function M.new_context()
  local s = I.check_state("dist_autograd.new_context")
  local co = coroutine.running()
  local outer = I.current_context()
  if outer ~= nil then
    error(("dist_autograd.new_context: this task is already in context %s; " ..
      "close it first (contexts do not nest)"):format(id_text(outer.id)), 2)
  end
  serial = serial + 1
  local ctx = new_context_record(I.new_id(s.rank, serial))
  ctx.task = co
  I.task_contexts[co] = ctx
  return ctx
end

local RELEASE_TIMEOUT = 10

-- Frees the context here, then on the workers it exchanged messages with
-- (but `from`, who asked), and waits for them; a worker that is gone has
-- nothing left to free.
local function release(ctx, from)
  if ctx.closed then return end
  ctx.closed = true
  contexts[ctx.id] = nil
  remember_released(ctx.id)
  live = live - 1
  if ctx.task ~= nil and I.task_contexts[ctx.task] == ctx then
    I.task_contexts[ctx.task] = nil
  end
  ctx.grads:close()
  ctx.sends = {}
  local s = I.state()
  if s == nil then return end
  local pending = {}
  for peer in pairs(ctx.peers) do
    if peer ~= from and peer ~= s.rank then
      local ok, f = pcall(call_plain, peer, "ember:dist_autograd_release",
        { ctx.id, s.rank }, { timeout = RELEASE_TIMEOUT })
      if ok then pending[#pending + 1] = f end
    end
  end
  if #pending > 0 then futures.collect_all(pending):wait() end
end

rpc._builtin("dist_autograd_release", function(id, from)
  local ctx = contexts[id]
  if ctx ~= nil then release(ctx, from) end
  return true
end)

function Context:close()
  release(self, nil)
end
Context.__close = Context.close

-- dist_autograd.context(fn): runs fn(ctx) in a new context and closes it
-- whatever happens; returns what fn returns.
function M.context(fn)
  if type(fn) ~= "function" then
    error(("dist_autograd.context: expected a function(ctx), got %s; or use " ..
      "dist_autograd.new_context()"):format(type(fn)), 2)
  end
  local ctx = M.new_context()
  local result = table.pack(xpcall(fn, debug.traceback, ctx))
  ctx:close()
  if not result[1] then error(result[2], 0) end
  return unpack(result, 2, result.n)
end

-- --- Backward ------------------------------------------------------------------------

-- The code of an error (a RemoteError's remote code), to keep when it is
-- wrapped with more context.
local function code_of(err)
  if type(err) == "table" then
    return rawget(err, "remote_code") or rawget(err, "code") or "EREMOTE"
  end
  return "EREMOTE"
end

local function message_of(err)
  if type(err) == "table" and type(rawget(err, "message")) == "string" then
    return err.message
  end
  return tostring(err)
end
M._message_of = message_of

-- Sends each worker the gradients of its sends (one call per worker and
-- context: a tensor received in another context sends its gradient to
-- that one's send, as PyTorch does) and waits until all of them have run
-- their share.
local function propagate(outgoing)
  if #outgoing == 0 then return end
  local batches, order = {}, {}
  for _, item in ipairs(outgoing) do
    local key = item.worker .. "/" .. item.context
    local batch = batches[key]
    if batch == nil then
      batch = { worker = item.worker, context = item.context, sends = {},
        grads = {} }
      batches[key] = batch
      order[#order + 1] = batch
    end
    batch.sends[#batch.sends + 1] = item.send
    batch.grads[#batch.grads + 1] = item.grad
  end
  local calls = {}
  for i, batch in ipairs(order) do
    calls[i] = call_plain(batch.worker, "ember:dist_autograd_backward",
      { batch.context, batch.sends, batch.grads })
  end
  for i, f in ipairs(futures.collect_all(calls):wait()) do
    local ok, err = pcall(f.wait, f)
    if not ok then
      error(core.new_error(code_of(err), ("worker %s failed its part of the " ..
        "backward pass: %s"):format(worker_name(order[i].worker),
        message_of(err))), 0)
    end
  end
end

rpc._builtin("dist_autograd_backward", function(id, sends, grads)
  local ctx = contexts[id]
  if ctx == nil then
    error(("no distributed autograd context %s here (it was closed)"):format(
      id_text(id)), 0)
  end
  local roots = {}
  for i, send in ipairs(sends) do
    roots[i] = ctx.sends[send]
    if roots[i] == nil then
      error(("context %s has no send %s"):format(id_text(id), tostring(send)), 0)
    end
  end
  propagate(C.backward(ctx.grads, roots, grads, true))
  return true
end)

local function check_roots(roots)
  if is_tensor(roots) then roots = { roots } end
  if type(roots) ~= "table" or #roots == 0 then
    error(("dist_autograd.backward: roots must be a list of tensors, got %s")
      :format(type(roots)), 3)
  end
  for i, t in ipairs(roots) do
    if not is_tensor(t) then
      error(("dist_autograd.backward: roots[%d] is a %s, not a tensor"):format(
        i, type(t)), 3)
    end
    if not t.requires_grad then
      error(("dist_autograd.backward: roots[%d] does not require grad"):format(i), 3)
    end
    if t:numel() ~= 1 then
      error(("dist_autograd.backward: roots[%d] must have one element (a " ..
        "loss), not %d"):format(i, t:numel()), 3)
    end
  end
  return roots
end

-- dist_autograd.backward(ctx, roots [, retain_graph]): the distributed
-- backward pass from roots (one-element tensors, e.g. {loss}); gradients
-- accumulate in the context on every worker the graph reaches. A root runs
-- once per context unless retain_graph was given the time before.
function M.backward(ctx, roots, retain_graph)
  ctx = check_context(ctx, "backward")
  roots = check_roots(roots)
  for i, t in ipairs(roots) do
    if ctx.used_roots[t] then
      error(("dist_autograd.backward: roots[%d] already ran a backward pass " ..
        "in this context; pass retain_graph=true to the first to run " ..
        "another"):format(i), 2)
    end
  end
  local ok, err = pcall(function()
    -- The graph is kept either way: see the top of this file.
    propagate(C.backward(ctx.grads, roots, nil, true))
  end)
  if not ok then
    error(core.new_error(code_of(err), "dist_autograd.backward: " ..
      message_of(err)), 2)
  end
  if not retain_graph then
    for _, t in ipairs(roots) do ctx.used_roots[t] = true end
  end
end

-- dist_autograd.get_gradients(ctx): {tensor = gradient} for the leaves of
-- this worker that the context's backward passes reached.
function M.get_gradients(ctx)
  return check_context(ctx, "get_gradients").grads:gradients()
end

-- The gradients of ctx here (nil when the context never reached this
-- worker), for ember.dist_optim.
function M._grad_map(id)
  local ctx = contexts[id]
  return ctx and ctx.grads or nil
end

-- --- RRef:backward ---------------------------------------------------------------

local function local_backward(value, ctx, retain_graph)
  if not is_tensor(value) then
    error(("RRef:backward: the value is a %s, not a tensor"):format(type(value)), 0)
  end
  if ctx == nil then
    value:backward({ retain_graph = retain_graph == true })
  else
    M.backward(ctx, { value }, retain_graph)
  end
  return true
end

rpc._builtin("dist_autograd_rref_backward", function(r, id, retain_graph)
  return local_backward(r:local_value(), id or nil, retain_graph)
end)

function M._rref_backward(r, ctx, retain_graph)
  local id = ctx
  if getmetatable(ctx) == Context then id = ctx.id end
  if id ~= nil and math.type(id) ~= "integer" then
    error(("RRef:backward: expected a context or its id, got %s"):format(
      type(ctx)), 3)
  end
  if r:is_owner() then return local_backward(r:local_value(), id, retain_graph) end
  -- false, not nil: a hole would drop what follows from the list.
  return call_plain(r:owner(), "ember:dist_autograd_rref_backward",
    { r, id or false, retain_graph == true }):wait()
end

-- --- Statistics and the end of the world ----------------------------------------------

table.insert(I.hooks.stats, function(stats)
  local sends = 0
  for _, ctx in pairs(contexts) do
    for _ in pairs(ctx.sends) do sends = sends + 1 end
  end
  stats.dist_autograd = { contexts = live, sends = sends }
end)

table.insert(I.hooks.closed, function()
  for _, ctx in pairs(contexts) do
    ctx.closed = true
    ctx.grads:close()
  end
  contexts, live = {}, 0
  released, released_order = {}, {}
end)

return M
