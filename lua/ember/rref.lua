-- ember.rref: remote references. rpc.remote(to, fn, args) makes a value on
-- worker `to` and returns an RRef to it at once; rpc.RRef(value) makes one
-- owned here. RRefs travel in arguments and results to any worker. The C
-- core (core/rref.c) counts who holds a reference (PyTorch's fork/confirm
-- protocol); this module keeps the values, the RRef objects, their methods
-- and proxies, and the RRef part of shutdown. It extends ember.rpc.
local core = require "ember.core"
local futures = require "ember.futures"
local rpc = require "ember.rpc"

local I = rpc._internal
local unpack = table.unpack
local spawn = core.spawn

-- Values owned here, by rref id: a record {id=, future=} whose future holds
-- the value (or the error that creating it raised). `owned` finds the record
-- of any live RRef object; `kept` holds the records that other workers refer
-- to, until the C core says their last fork is gone.
local owned = setmetatable({}, { __mode = "v" })
local kept = {}

local RRef = {}
RRef.__index = RRef
RRef.__name = "ember.RRef"

local state_or_fail = I.check_state

-- Ids are (creating worker << 40) | serial (core/rref.h).
local creator_of, id_text = I.id_creator, I.id_text

local function worker_name(s, id)
  local info = s and s.workers[id]
  return info and info.name or ("worker " .. tostring(id))
end

-- A future whose failure nobody may ever read: no warning when it is dropped.
local function quiet(future)
  future:add_done_callback(function() end)
  return future
end

-- A record for value `id`; its future completes with the value (or the
-- RemoteError that making it raised).
local function new_record(id)
  local rec = { id = id, future = quiet(core.Future()) }
  owned[id] = rec
  return rec
end

-- Runs fn(args) here as a task; the record's future gets what it gives.
local function start_value(rec, fn, args)
  rec.started = true
  local ctx = I.current_context() -- made in an autograd context: stays in it
  spawn(function()
    if ctx ~= nil then I.task_contexts[coroutine.running()] = ctx end
    local ok, result = xpcall(I.run_function, I.to_remote_error, fn, args)
    if ok then rec.future:set_result(result) else rec.future:set_exception(result) end
  end)
  return rec
end

local function owner_rref(s, rec)
  return setmetatable({ owner_id = s.rank, id = rec.id, rec = rec,
    agent = s.agent }, RRef)
end

-- A fork held here of a value on another worker. Lua's collector deletes it
-- at the owner (__gc), once the C core says that is safe.
local function user_rref(s, id, fork, owner)
  return setmetatable({ owner_id = owner, id = id, fork = fork,
    agent = s.agent }, RRef)
end

function RRef.__gc(r)
  if r.fork ~= nil then r.agent:rref_user_release(r.fork) end
end

function RRef.__tostring(r)
  return ("RRef(owner=%s, id=%s)"):format(worker_name(I.state(), r.owner_id),
    id_text(r.id))
end

function RRef.__eq(a, b)
  return a.id == b.id
end

-- --- Travelling -------------------------------------------------------------

-- While a message is encoded: where it goes, and the forks made for it (undone
-- if the message is not sent).
local sending = nil

function I.send_to(dest, f, ...)
  local outer = sending
  local message = { dest = dest }
  sending = message
  local ok, result = pcall(f, ...)
  sending = outer
  if not ok then
    local s = I.state()
    if s and s.agent then
      for i = 1, #message, 2 do
        s.agent:rref_cancel_fork(message[i], message[i + 1])
      end
    end
    error(result, 0)
  end
  return result
end

-- State of an RRef on the wire: {owner, id, fork, sender}. Each copy sent
-- is a new fork, registered before it leaves.
function RRef.__pack(r)
  local s = I.state()
  if s == nil or s.agent ~= r.agent then
    error("this RRef belongs to an RPC world that was shut down", 0)
  end
  if sending == nil then
    error("an RRef travels only in RPC arguments and results", 0)
  end
  local fork = s.agent:rref_new_id()
  if r.rec then
    s.agent:rref_add_fork(r.id, fork, sending.dest)
    kept[r.id] = r.rec
  else
    s.agent:rref_add_child(r.fork, fork, sending.dest)
  end
  sending[#sending + 1] = r.id
  sending[#sending + 1] = fork
  return { r.owner_id, r.id, fork, s.rank }
end

function RRef.__unpack(state)
  local s = I.state()
  if s == nil then error("an RRef arrived after RPC was shut down", 0) end
  local owner, id, fork, sender = state[1], state[2], state[3], state[4]
  if math.type(owner) ~= "integer" or math.type(id) ~= "integer" or
      math.type(fork) ~= "integer" or math.type(sender) ~= "integer" then
    error("malformed RRef: expected {owner, id, fork, sender} integers", 0)
  end
  if owner == s.rank then
    -- Our own value came back: the sender may drop its fork.
    s.agent:rref_owner_received(fork, sender)
    local rec = owned[id]
    if rec == nil then
      error(("RRef %s came back, but its value no longer exists here"):format(
        id_text(id)), 0)
    end
    return owner_rref(s, rec)
  end
  s.agent:rref_user_new(id, fork, owner, sender)
  return user_rref(s, id, fork, owner)
end

rpc.register_class("ember.RRef", RRef)

-- --- What owners serve --------------------------------------------------------

-- How long a fetch or proxy call waits for a value whose creation request
-- has not arrived yet (it may come after them, from its creator).
local CREATION_WAIT = 10

-- The value `id` for worker `from`, waiting for its creation if need be.
-- From the worker that made the id, the creation request came first on the
-- same connection: if there is no value, there will be none.
local function value_of(id, from)
  local rec = owned[id]
  if rec == nil and from ~= creator_of(id) then rec = new_record(id) end
  if rec ~= nil and not rec.started and not rec.future:done() then
    futures.wait_any({ rec.future }, { timeout = CREATION_WAIT })
  end
  if rec == nil or not rec.future:done() then
    local s = I.state()
    error(("RRef %s has no value on worker '%s' (it was deleted, or never " ..
      "created here)"):format(id_text(id), s and s.name or "?"), 0)
  end
  return rec.future:wait()
end

-- remote(): make the value for the caller, who made the id, and answer at
-- once. The fork is registered before the value exists: the caller holds
-- its RRef from the moment remote() returned. A record may exist already,
-- made by a fetch that came first (from a third worker given the RRef).
local CREATE = rpc._builtin("rref_create", function(id, fn, args)
  local s = I.state()
  local rec = owned[id] or new_record(id)
  s.agent:rref_add_fork(id, id, creator_of(id))
  kept[id] = rec
  if not rec.started then start_value(rec, fn, args) end
  return true
end)

local FETCH = rpc._builtin("rref_fetch", value_of)

local function call_method(value, method, args)
  if type(method) ~= "string" then
    error("a proxy call needs a method name, got " .. type(method), 0)
  end
  local fn
  if type(value) == "table" or type(value) == "userdata" then
    local ok, found = pcall(function() return value[method] end)
    if ok then fn = found end
  end
  if type(fn) ~= "function" then
    error(("the RRef's value (a %s) has no method '%s'"):format(type(value),
      method), 0)
  end
  return I.settle_result(fn, fn(value, unpack(args, 1, args.n or #args)),
    ("async_execution method '%s'"):format(method))
end

local CALL = rpc._builtin("rref_call", function(id, from, method, args)
  return call_method(value_of(id, from), method, args)
end)

-- --- The public API ---------------------------------------------------------------

local function check_rref(r, fname)
  if getmetatable(r) ~= RRef then
    error(("%s: expected an RRef, got %s"):format(fname, type(r)), 3)
  end
  return r
end

-- rpc.RRef(value): an RRef to a value owned by this worker.
function rpc.RRef(value)
  local s = state_or_fail("RRef")
  local rec = new_record(s.agent:rref_new_id())
  rec.started = true
  rec.future:set_result(value)
  return owner_rref(s, rec)
end

-- rpc.remote(to, fn, args, {timeout=}): an RRef to fn(table.unpack(args)) run
-- on `to`, returned at once; the value stays there.
function rpc.remote(to, fn, args, opts)
  local s = state_or_fail("remote")
  local dest = I.peer_id(s, to, "remote")
  local ref = I.function_arg(fn, "remote")
  args = I.pack_args(args, "remote")
  local timeout = I.call_options(s, opts, "remote")
  if dest == s.rank then
    I.check_travels(args, "args", "remote")
    return owner_rref(s, start_value(new_record(s.agent:rref_new_id()), ref,
      args))
  end
  local id = s.agent:rref_new_id()
  local ack = rpc.rpc_async(dest, CREATE, { id, ref, args }, { timeout = timeout })
  s.agent:rref_user_new(id, id, dest, s.rank)
  local r = user_rref(s, id, id, dest)
  -- Until the owner answers, the fork is not confirmed and cannot be deleted.
  ack:add_done_callback(function(f)
    if f:failed() then
      local _, err = pcall(f.value, f)
      r.creation_error = err
    end
    local now = I.state()
    if now ~= nil and now.agent == r.agent then r.agent:rref_user_confirm(id) end
  end)
  return r
end

function RRef:owner()
  check_rref(self, "owner")
  local s = state_or_fail("owner")
  return s.workers[self.owner_id]
end

function RRef:owner_name()
  check_rref(self, "owner_name")
  return worker_name(state_or_fail("owner_name"), self.owner_id)
end

function RRef:is_owner()
  check_rref(self, "is_owner")
  return self.rec ~= nil
end

function RRef:confirmed_by_owner()
  check_rref(self, "confirmed_by_owner")
  if self.rec then return true end
  return self.agent:rref_user_state(self.fork) == true
end

-- The value, on its owner only (waits while it is being made).
function RRef:local_value()
  check_rref(self, "local_value")
  if self.rec == nil then
    I.fail("EINVAL", "local_value: this RRef is owned by worker '%s', not " ..
      "this one; use to_here() to fetch a copy", self:owner_name())
  end
  return self.rec.future:wait()
end

-- A copy of the value, fetched from the owner (the value itself on it).
-- A timeout in seconds: a number >= 0 (not NaN), or nil for the world's.
local function check_timeout(fname, timeout)
  if timeout ~= nil and (type(timeout) ~= "number" or not (timeout >= 0)) then
    I.fail("EINVAL", "%s: timeout must be a number of seconds >= 0, got %s",
      fname, tostring(timeout))
  end
  return timeout
end

function RRef:to_here(timeout)
  check_rref(self, "to_here")
  check_timeout("to_here", timeout)
  if self.rec then return self.rec.future:wait() end
  return self:_checked(rpc.rpc_sync, FETCH, { self.id,
    state_or_fail("to_here").rank },
    timeout ~= nil and { timeout = timeout } or nil)
end

-- Sends a request about this RRef to its owner with send(...). When making
-- the value failed on the way (its creation request could not be read),
-- that failure is what the caller sees.
function RRef:_checked(send, fn, args, opts)
  if self.creation_error ~= nil then error(self.creation_error, 0) end
  local ok, result = pcall(send, self.owner_id, fn, args, opts)
  if ok then return result end
  if self.creation_error ~= nil then error(self.creation_error, 0) end
  error(result, 0)
end

-- Proxies: rref:rpc_sync():method(...) runs value:method(...) on the owner.
local function proxy(r, opts, send)
  return setmetatable({}, {
    __index = function(_, method)
      return function(_, ...)
        local from = state_or_fail("proxy").rank
        return r:_checked(send, CALL, { r.id, from, method, table.pack(...) },
          opts)
      end
    end,
  })
end

local function proxy_options(fname, timeout)
  if timeout == nil then return nil end
  if type(timeout) == "table" then
    check_timeout(fname, timeout.timeout)
    return timeout
  end
  return { timeout = check_timeout(fname, timeout) }
end

function RRef:rpc_sync(timeout)
  check_rref(self, "rpc_sync")
  return proxy(self, proxy_options("rpc_sync", timeout), rpc.rpc_sync)
end

function RRef:rpc_async(timeout)
  check_rref(self, "rpc_async")
  return proxy(self, proxy_options("rpc_async", timeout), rpc.rpc_async)
end

function RRef:remote(timeout)
  check_rref(self, "remote")
  return proxy(self, proxy_options("remote", timeout), rpc.remote)
end

-- rref:backward([ctx [, retain_graph]]): a backward pass from the value (a
-- one-element tensor) on its owner. With a distributed autograd context
-- (the object or its id) it is a distributed backward starting there, as
-- dist_autograd.backward(ctx, {value}) on the owner; without, a local one.
function RRef:backward(ctx, retain_graph)
  check_rref(self, "backward")
  return require("ember.dist_autograd")._rref_backward(self, ctx, retain_graph)
end

-- --- Life of the world ----------------------------------------------------------

local function on_released(id)
  kept[id] = nil
end
I.on_rref_released = on_released

table.insert(I.hooks.stats, function(stats, s)
  stats.rrefs = s.agent:rref_stats()
end)

-- Waits until no RRef message awaits an answer; false after `timeout`.
local function settle(s, timeout)
  local settled = s.agent:rref_settled()
  local done = futures.wait_any({ settled }, { timeout = timeout })
  return #done == 1
end

local function collect()
  collectgarbage()
  collectgarbage()
end

local SETTLE_TIMEOUT = 30

-- Before the first barrier: RRefs dropped so far are deleted everywhere.
table.insert(I.hooks.before_barrier, function(s, opts)
  collect()
  settle(s, opts.timeout or SETTLE_TIMEOUT)
end)

local function report_leaks(s, held)
  local owners, seen = {}, {}
  for _, h in ipairs(held) do
    local name = worker_name(s, h.owner)
    if not seen[name] then
      seen[name] = true
      owners[#owners + 1] = "'" .. name .. "'"
    end
  end
  io.stderr:write(("ember: rpc.shutdown on worker '%s': RRef leak: %d RRef%s " ..
    "to values on worker%s %s %s still held; drop them before shutdown, or " ..
    "pass {ignore_rref_leak=true}\n"):format(s.name, #held,
    #held == 1 and "" or "s", #owners == 1 and "" or "s",
    table.concat(owners, ", "), #held == 1 and "is" or "are"))
  io.stderr:flush()
end

-- A value that keeps its own RRef (an agent holding rpc.RRef(self), as in
-- the tutorials) is never collected: the future that holds it is a root.
-- Past the first barrier no worker may use owned values any more, so they are
-- dropped, and what they referred to (the agent's RRefs to its observers)
-- goes with them rather than counting as a leak.
local function forget_values(s)
  local gone
  for _, rec in pairs(owned) do
    if rec.future:done() then
      if gone == nil then
        gone = quiet(core.Future())
        gone:set_exception(I.remote_error(("the values of worker '%s' are " ..
          "gone: it is shutting down"):format(s.name), ""))
      end
      rec.future = gone
    end
  end
end

-- After it: whatever is still held is a leak; report it, then delete it all
-- so the owners end with nothing referenced (the second barrier follows).
table.insert(I.hooks.after_barrier, function(s, opts)
  forget_values(s)
  collect()
  local timeout = opts.timeout or SETTLE_TIMEOUT
  settle(s, timeout)
  local held = s.agent:rref_held()
  if #held > 0 and not opts.ignore_rref_leak then report_leaks(s, held) end
  s.agent:rref_release_all()
  if not settle(s, timeout) then
    io.stderr:write(("ember: rpc.shutdown on worker '%s': gave up waiting " ..
      "for RRef messages after %g s\n"):format(s.name, timeout))
  end
end)

table.insert(I.hooks.closed, function()
  kept = {}
end)

return {}
