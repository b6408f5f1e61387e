-- Futures, tasks and timers, under stock lua5.4 with `require "ember"`.
local ember = require "ember"
local core = require "ember.core"
local futures = ember.futures
local Future = futures.Future

-- Runs fn as a task and drives the loop until it finishes; returns its value.
local function in_task(fn)
  return ember.spawn(fn):wait()
end

local function error_of(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  return err
end

describe("a future", function()
  it("starts pending and refuses value()", function()
    local f = Future()
    assert.is_false(f:done())
    local err = error_of(f.value, f)
    assert.is_true(core.is_error(err))
    assert.equal("EPENDING", err.code)
  end)

  it("holds its result", function()
    local f = Future()
    f:set_result({ 1, 2 })
    assert.is_true(f:done())
    assert.is_false(f:failed())
    assert.same({ 1, 2 }, f:value())
    assert.same({ 1, 2 }, f:wait())
  end)

  it("can hold nil and false", function()
    local a, b = Future(), Future()
    a:set_result(nil)
    b:set_result(false)
    assert.is_nil(a:wait())
    assert.is_false(b:wait())
  end)

  it("refuses a second completion", function()
    local f = Future()
    f:set_result(1)
    assert.matches("already completed", error_of(f.set_result, f, 2))
    assert.matches("already completed", error_of(f.set_exception, f, "x"))
    assert.equal(1, f:value())
  end)

  it("raises its error from wait() and value()", function()
    local f = Future()
    local e = setmetatable({}, { __tostring = function() return "custom" end })
    f:set_exception(e)
    assert.is_true(f:failed())
    assert.equal(e, error_of(f.wait, f))
    assert.equal(e, error_of(f.value, f))
  end)

  it("needs an error value for set_exception", function()
    assert.matches("error value", error_of(Future().set_exception, Future()))
  end)

  it("names itself in tostring", function()
    local f = Future()
    assert.matches("^ember.Future %(pending%)", tostring(f))
    f:set_result(1)
    assert.matches("^ember.Future %(done%)", tostring(f))
  end)
end)

describe("callbacks", function()
  it("receive the future, not the value", function()
    local f, seen = Future(), nil
    f:add_done_callback(function(x) seen = x end)
    f:set_result(7)
    assert.equal(f, seen)
    assert.equal(7, seen:value())
  end)

  it("run in the order they were added", function()
    local f, order = Future(), {}
    for i = 1, 5 do f:add_done_callback(function() order[#order + 1] = i end) end
    assert.same({}, order)
    f:set_result(true)
    assert.same({ 1, 2, 3, 4, 5 }, order)
  end)

  it("run right away when added to a completed future", function()
    local f, ran = Future(), false
    f:set_result(1)
    f:add_done_callback(function() ran = true end)
    assert.is_true(ran)
  end)

  it("run for failed futures too", function()
    local f, seen = Future(), nil
    f:add_done_callback(function(x) seen = x:failed() end)
    f:set_exception("bad")
    assert.is_true(seen)
  end)

  it("keep running after one of them raises", function()
    local f, ran = Future(), false
    f:add_done_callback(function() error("callback failure") end)
    f:add_done_callback(function() ran = true end)
    f:set_result(1)
    assert.is_true(ran)
  end)

  it("must be callable", function()
    assert.matches("function expected", error_of(Future().add_done_callback, Future(), 3))
  end)
end)

describe("next (then)", function()
  it("returns a future of the callback's value", function()
    local f = Future()
    local g = f:next(function(p) return p:value() * 2 end)
    assert.is_false(g:done())
    f:set_result(21)
    assert.equal(42, g:wait())
  end)

  it("is also spelled then", function()
    local f = Future()
    local g = f["then"](f, function(p) return p:value() .. "!" end)
    f:set_result("hi")
    assert.equal("hi!", g:wait())
  end)

  it("fails with the callback's error and its traceback", function()
    local f = Future()
    local g = f:next(function() error("boom") end)
    f:set_result(1)
    local err = error_of(g.wait, g)
    assert.matches("boom", err)
    assert.matches("stack traceback", err)
  end)

  it("gives an ember.Error raised in the callback its traceback", function()
    local f = Future()
    local raised = core.new_error("EXAMPLE", "structured")
    local g = f:next(function() error(raised) end)
    f:set_result(1)
    local err = error_of(g.wait, g)
    assert.equal(raised, err)
    assert.equal("EXAMPLE", err.code)
    assert.matches("stack traceback", err.traceback)
    assert.matches("structured %(EXAMPLE%)\nstack traceback", tostring(err))
  end)

  it("passes a failed future to the callback", function()
    local f = Future()
    local g = f:next(function(p) return p:value() end)
    f:set_exception("upstream")
    assert.matches("upstream", error_of(g.wait, g))
  end)

  it("chains", function()
    local f = Future()
    local g = f:next(function(p) return p:value() + 1 end)
               :next(function(p) return p:value() * 10 end)
    f:set_result(1)
    assert.equal(20, g:wait())
  end)

  it("runs 100,000 links without growing the C stack", function()
    local head = Future()
    local tail = head
    for _ = 1, 100000 do tail = tail:next(function(p) return p:value() + 1 end) end
    head:set_result(0)
    assert.equal(100000, tail:wait())
  end)
end)

describe("wait", function()
  it("runs the loop outside any task", function()
    local f = Future()
    ember.after(0.01, function() f:set_result("late") end)
    assert.equal("late", f:wait())
  end)

  it("reports a future that can never complete", function()
    local err = error_of(Future().wait, Future())
    assert.equal("EDEADLOCK", err.code)
  end)

  it("pauses tasks; a timer completes the future they share", function()
    local f = Future()
    local woke = {}
    local tasks = {}
    for i = 1, 3 do
      tasks[i] = ember.spawn(function()
        local v = f:wait()
        woke[#woke + 1] = i
        return v + i
      end)
    end
    assert.same({}, woke)
    for i = 1, 3 do assert.is_false(tasks[i]:done()) end
    ember.after(0.01, function() f:set_result(100) end)
    assert.same({ 101, 102, 103, n = 3 }, futures.wait_all(tasks))
    assert.same({ 1, 2, 3 }, woke)
  end)

  it("raises a failed future's error inside the task", function()
    local f = Future()
    local task = ember.spawn(function()
      local ok, err = pcall(f.wait, f)
      return { ok, err }
    end)
    f:set_exception("no luck")
    assert.same({ false, "no luck" }, task:wait())
  end)

  it("cannot block the loop from a callback", function()
    local outer, inner = Future(), Future()
    local g = outer:next(function() return inner:wait() end)
    ember.after(0, function() outer:set_result(1) end)
    ember.after(0.01, function() inner:set_result(2) end)
    ember.sleep(0.02)
    assert.matches("not in an ember task", error_of(g.wait, g))
  end)
end)

describe("tasks", function()
  it("spawn returns a future of the first result", function()
    local task = ember.spawn(function(a, b) return a + b, "ignored" end, 2, 3)
    assert.equal(5, task:wait())
  end)

  it("run right away, up to their first wait", function()
    local steps = {}
    local task = ember.spawn(function()
      steps[#steps + 1] = "started"
      ember.sleep(0.001)
      steps[#steps + 1] = "resumed"
    end)
    assert.same({ "started" }, steps)
    task:wait()
    assert.same({ "started", "resumed" }, steps)
  end)

  it("fail with the error and its traceback", function()
    local task = ember.spawn(function() error("inside") end)
    local err = error_of(task.wait, task)
    assert.matches("inside", err)
    assert.matches("stack traceback", err)
  end)

  it("keep non-string errors as they are", function()
    local e = { code = 42 }
    local task = ember.spawn(function() error(e) end)
    assert.equal(e, error_of(task.wait, task))
  end)

  it("may not yield by hand", function()
    local task = ember.spawn(function() coroutine.yield(1) end)
    assert.matches("coroutine.yield", error_of(task.wait, task))
  end)

  it("interleave while they sleep", function()
    local order = {}
    local slow = ember.spawn(function() ember.sleep(0.05); order[#order + 1] = "slow" end)
    local fast = ember.spawn(function() ember.sleep(0.005); order[#order + 1] = "fast" end)
    futures.wait_all({ slow, fast })
    assert.same({ "fast", "slow" }, order)
  end)

  it("wait on each other", function()
    assert.equal(12, in_task(function()
      local child = ember.spawn(function() ember.sleep(0.001); return 6 end)
      return child:wait() * 2
    end))
  end)
end)

describe("timers", function()
  it("after returns a future of the function's result", function()
    local f = ember.after(0.001, function(x) return x * 3 end, 5)
    assert.equal(15, f:wait())
  end)

  it("after and sleep check their arguments", function()
    assert.matches("seconds must be", error_of(ember.sleep, -1))
    assert.matches("seconds must be", error_of(ember.after, "soon", print))
    assert.matches("fn must be a function", error_of(ember.after, 0, 3))
  end)

  it("fire in deadline order", function()
    local order = {}
    local a = ember.after(0.03, function() order[#order + 1] = "a" end)
    local b = ember.after(0.01, function() order[#order + 1] = "b" end)
    futures.wait_all({ a, b })
    assert.same({ "b", "a" }, order)
  end)
end)

describe("collect_all", function()
  it("completes when every future is done, failed ones included", function()
    local a, b = Future(), Future()
    local all = futures.collect_all({ a, b })
    a:set_exception("a failed")
    assert.is_false(all:done())
    b:set_result(2)
    local list = all:wait()
    assert.equal(a, list[1])
    assert.equal(b, list[2])
    assert.is_true(list[1]:failed())
    assert.equal(2, list[2]:value())
  end)

  it("completes at once for an empty list", function()
    assert.same({}, futures.collect_all({}):wait())
  end)

  it("names a bad element", function()
    assert.matches("list%[2%] is not a future",
      error_of(futures.collect_all, { Future(), 5 }))
  end)
end)

describe("wait_all", function()
  it("returns the values in order", function()
    local a = ember.after(0.02, function() return "a" end)
    local b = ember.after(0.001, function() return "b" end)
    assert.same({ "a", "b", n = 2 }, futures.wait_all({ a, b }))
  end)

  it("raises the first failure without waiting for the rest", function()
    local never = Future()
    local late = ember.after(0.05, function() error("late failure") end)
    local early = ember.after(0.001, function() error("early failure") end)
    local err = error_of(futures.wait_all, { never, late, early })
    assert.matches("early failure", err)
    assert.is_false(late:done())
    assert.matches("late failure", error_of(late.wait, late))
    never:set_result(0)
  end)
end)

describe("edge cases", function()
  local throwing_tostring = { __tostring = function() error("no tostring") end }

  it("survive a callback error whose __tostring raises", function()
    local f, later = Future(), false
    f:add_done_callback(function() error(setmetatable({}, throwing_tostring)) end)
    f:add_done_callback(function() later = true end)
    f:set_result(1)
    assert.is_true(later)
    ember.sleep(0.001) -- the loop is still usable
  end)

  it("keep one traceback along a chain of next()", function()
    local head = Future()
    local tail = head:next(function() error("deep") end)
    for _ = 1, 50 do tail = tail:next(function(p) return p:value() end) end
    head:set_result(1)
    local err = error_of(tail.wait, tail)
    local _, count = err:gsub("stack traceback:", "")
    assert.equal(1, count)
  end)

  it("let a callback wait before the loop runs, on work queued behind it", function()
    local a, seen = Future(), nil
    a:add_done_callback(function()
      local b = Future()
      b:set_result(1)
      local c = b:next(function(f) return f:value() + 1 end)
      seen = { c:wait(), futures.wait_all({ b })[1] }
    end)
    a:set_result(0)
    assert.same({ 2, 1 }, seen)
  end)

  it("spawn takes many arguments", function()
    local args = {}
    for i = 1, 300 do args[i] = i end
    local task = ember.spawn(function(...) return select("#", ...) end,
      table.unpack(args))
    assert.equal(300, task:wait())
  end)

  it("close a hand-yielding task's to-be-closed variables", function()
    local closed = false
    local task = ember.spawn(function()
      local guard <close> = setmetatable({}, { __close = function() closed = true end })
      coroutine.yield()
    end)
    assert.matches("coroutine.yield", error_of(task.wait, task))
    assert.is_true(closed)
  end)

  it("keep futures working when ember.core is loaded again", function()
    local f = Future()
    f:set_result({ "kept" })
    local pending = Future()
    package.loaded["ember.core"] = nil
    local again = require "ember.core"
    collectgarbage()
    assert.same({ "kept" }, f:value())
    local g = again.Future()
    pending:set_result("old to new")
    g:set_result(pending:value())
    assert.equal("old to new", g:wait())
  end)

  it("free failed futures whose error cannot be printed", function()
    collectgarbage()
    collectgarbage()
    local before = core.live_futures()
    for _ = 1, 100 do Future():set_exception(setmetatable({}, throwing_tostring)) end
    collectgarbage()
    collectgarbage()
    assert.is_true(core.live_futures() <= before)
  end)
end)

describe("memory", function()
  local function settle()
    collectgarbage()
    collectgarbage()
  end

  -- Futures left by earlier specs may be freed meanwhile, so the count may
  -- drop; a leak makes it grow by the number of futures made.
  local function assert_no_growth(before)
    settle()
    local after = core.live_futures()
    assert(after <= before, ("live futures grew from %d to %d"):format(before, after))
  end

  it("completed futures with nobody waiting leak nothing", function()
    settle()
    local before = core.live_futures()
    for i = 1, 10000 do
      local f = Future()
      f:next(function(p) return p:value() end):add_done_callback(function() end)
      f:set_result(i)
    end
    assert_no_growth(before)
  end)

  it("pending futures that nobody holds are freed with their callbacks", function()
    settle()
    local before = core.live_futures()
    for _ = 1, 1000 do
      local f = Future()
      f:next(function() end)
      f:add_done_callback(function() end)
    end
    assert_no_growth(before)
  end)

  it("finished tasks and timers leak nothing", function()
    settle()
    local before = core.live_futures()
    local list = {}
    for i = 1, 200 do list[i] = ember.after(0, function() return i end) end
    futures.wait_all(list)
    list = nil
    assert_no_growth(before)
  end)
end)
