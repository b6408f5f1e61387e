-- The ember executable: commands, exit status, errors, scripts, the REPL.
local EMBER = os.getenv("EMBER_BIN") or "build/bin/ember"
-- A sanitizer build's module needs its runtime preloaded into lua5.4.
local preload = os.getenv("EMBER_TEST_PRELOAD")
local LUA = (preload and ("env LD_PRELOAD=" .. preload .. " ") or "") .. "lua5.4"

-- Runs a shell command bounded in time; returns output (stdout and stderr
-- together unless split) and the exit status.
local function sh(command, input)
  local script = os.tmpname()
  if input then
    local f = assert(io.open(script, "w"))
    f:write(input)
    f:close()
  end
  local pipe = assert(io.popen(("timeout 60 %s < %s 2>&1"):format(
    command, input and script or "/dev/null")))
  local output = pipe:read("a")
  local _, _, status = pipe:close()
  os.remove(script)
  return output, status
end

-- `ember run` on a script with the given source; returns output and status.
local function run_source(source)
  local path = os.tmpname() .. ".lua"
  local f = assert(io.open(path, "w"))
  f:write(source)
  f:close()
  local out, status = sh(EMBER .. " run " .. path)
  os.remove(path)
  return out, status
end

describe("ember", function()
  it("prints its version", function()
    local out, status = sh(EMBER .. " --version")
    assert.equal(0, status)
    assert.matches("^ember %d+%.%d+%.%d+ %(Lua 5%.4%)", out)
  end)

  it("prints help with every command", function()
    local out, status = sh(EMBER .. " --help")
    assert.equal(0, status)
    for _, command in ipairs({ "run SCRIPT", "launch", "repl", "--version" }) do
      assert.truthy(out:find(command, 1, true), command)
    end
  end)

  it("rejects an unknown command with status 2", function()
    local out, status = sh(EMBER .. " frobnicate")
    assert.equal(2, status)
    assert.matches("unknown command 'frobnicate'", out)
  end)

  it("shows usage and fails when given no command", function()
    local out, status = sh(EMBER)
    assert.equal(2, status)
    assert.matches("usage: ember COMMAND", out)
  end)
end)

describe("ember run", function()
  it("gives the script arg and ... as lua5.4 does, inside a task", function()
    local out, status = sh(EMBER .. " run spec/fixtures/args.lua x y")
    assert.equal(0, status)
    assert.matches("arg0=spec/fixtures/args.lua\targ1=x\targ2=y", out)
    assert.matches("varargs=x,y", out)
    assert.matches("in_task=true", out)
  end)

  it("exits 1 with the message and traceback of an uncaught error", function()
    local out, status = run_source("local function f() error('kaput') end\nf()\n")
    assert.equal(1, status)
    assert.matches("kaput", out)
    assert.matches("stack traceback:", out)
    assert.matches("in local 'f'", out)
  end)

  it("names a script that cannot be loaded", function()
    local out, status = sh(EMBER .. " run /nonexistent/script.lua")
    assert.equal(1, status)
    assert.matches("cannot load /nonexistent/script.lua", out)
  end)

  it("reports a syntax error with its line", function()
    local out, status = run_source("local x = = 1\n")
    assert.equal(1, status)
    assert.matches(":1:", out)
  end)

  it("explains a script blocked forever on a future", function()
    local out, status = run_source("require('ember').futures.Future():wait()\n")
    assert.equal(1, status)
    assert.matches("is blocked: it waits on a future", out)
  end)

  it("lets timers the script left behind finish", function()
    local out, status = run_source(
      "require('ember').after(0.02, function() print('timer fired') end)\n")
    assert.equal(0, status)
    assert.matches("timer fired", out)
  end)

  it("warns about a failed task whose error nobody read", function()
    local out = run_source(
      "require('ember').after(0, function() error('unseen') end)\n")
    assert.matches("without anyone reading its error: .*unseen", out)
  end)

  it("reads the script from standard input with -", function()
    local out, status = sh(EMBER .. " run -", "print('from stdin', ...)\n")
    assert.equal(0, status)
    assert.matches("from stdin", out)
  end)

  it("passes hundreds of arguments", function()
    local many = {}
    for i = 1, 300 do many[i] = tostring(i) end
    local out, status = sh(EMBER .. " run - " .. table.concat(many, " "),
      "print('got', select('#', ...), arg[300])\n")
    assert.equal(0, status)
    assert.matches("got\t300\t300", out)
  end)

  it("chains 1,000,000 next callbacks", function()
    local out, status = sh(EMBER .. " run spec/fixtures/chain.lua 1000000")
    assert.equal(0, status)
    assert.matches("chained 1000000", out)
  end)
end)

describe("ember repl", function()
  it("prints expression results like lua5.4", function()
    local out, status = sh(EMBER .. " repl", "1 + 1\nreturn 'a', nil, 3\nprint('x')\n")
    assert.equal(0, status)
    assert.matches("\n?> 2\n", out)
    assert.matches("a\tnil\t3", out)
    assert.matches("x\n", out)
  end)

  it("reads multi-line input until the chunk is complete", function()
    local out = sh(EMBER .. " repl", "function double(n)\nreturn n * 2\nend\ndouble(21)\n")
    assert.matches(">> ", out)
    assert.matches("42", out)
  end)

  it("shows errors and keeps going", function()
    local out, status = sh(EMBER .. " repl", "error('oops')\n'still here'\n")
    assert.equal(0, status)
    assert.matches("oops", out)
    assert.matches("still here", out)
  end)

  it("has ember loaded, and waits yield to the loop", function()
    local out = sh(EMBER .. " repl",
      "ember.after(0.01, function() return 'later' end):wait()\n")
    assert.matches("later", out)
  end)

  it("reports a syntax error without quitting", function()
    local out, status = sh(EMBER .. " repl", "x = = 1\n1\n")
    assert.equal(0, status)
    assert.matches("unexpected symbol", out)
  end)

  it("stops a chunk on Ctrl-C and keeps going", function()
    local log = os.tmpname()
    local _, status = sh("sh spec/fixtures/interrupt.sh " .. EMBER .. " " .. log)
    local f = assert(io.open(log))
    local out = f:read("a")
    f:close()
    os.remove(log)
    assert.equal(0, status)
    local _, interrupts = out:gsub("interrupted!", "")
    assert.equal(2, interrupts)
    assert.matches("> 42\n", out)
  end)

  it("refuses a --join that is not HOST:PORT, and one nobody answers", function()
    local out, status = sh(EMBER .. " repl --join nonsense")
    assert.equal(2, status)
    assert.matches("--join expects HOST:PORT", out, nil, true)
    out, status = sh(EMBER .. " repl --join 127.0.0.1:1 --timeout 0.3")
    assert.equal(1, status)
    assert.matches("cannot reach the store at 127.0.0.1:1", out, nil, true)
  end)
end)

describe("stock lua5.4 with require 'ember'", function()
  it("runs futures and timers", function()
    local out, status = sh(LUA .. " -e \"local e = require 'ember'; print(e.after(0.001, function() return 'ok' end):wait())\"")
    assert.equal(0, status)
    assert.matches("^ok\n", out)
  end)

  it("refuses loop work from finalizers once the state is closing", function()
    local out, status = sh(LUA .. " -", [[
      local guard = setmetatable({}, { __gc = function()
        print("sleep", pcall(function() require("ember").sleep(0.01) end))
        print("future", pcall(function() require("ember").futures.Future() end))
      end })
      require "ember"
    ]])
    assert.equal(0, status)
    assert.matches("sleep\tfalse\t.*loop is closed", out)
    assert.matches("future\tfalse\t.*loop is closed", out)
  end)
end)
