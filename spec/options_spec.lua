-- ember.options: command-line options for scripts.
local options = require "ember.options"

local DECLARED = {
  usage = "train.lua [options]",
  arguments = true,
  about = "Trains something.",
  { "seed", 543, "random seed" },
  { "gamma", 1.0, "discount factor" },
  { "batch", true, "evaluate once per step" },
  { "device", "cpu", "where to run", choices = { "cpu", "cuda" } },
  { "log-interval", 10, "episodes between logs" },
  { "sweep", nil, "world sizes", kind = "string" },
}

local function parse(...)
  return options.try_parse({ ... }, DECLARED)
end

describe("ember.options", function()
  it("gives the defaults when nothing is passed", function()
    local opts = assert(parse())
    assert.equal(543, opts.seed)
    assert.equal("integer", math.type(opts.seed))
    assert.equal(1.0, opts.gamma)
    assert.is_true(opts.batch)
    assert.equal("cpu", opts.device)
    assert.equal(10, opts.log_interval)
    assert.is_nil(opts.sweep)
    assert.same({}, opts.rest)
  end)

  it("reads --name VALUE, --name=VALUE, dashes or underscores", function()
    local opts = assert(parse("--seed", "7", "--gamma=0.5", "--log_interval",
      "3", "--sweep", "2..11", "--device=cuda"))
    assert.equal(7, opts.seed)
    assert.equal(0.5, opts.gamma)
    assert.equal(3, opts.log_interval)
    assert.equal("2..11", opts.sweep)
    assert.equal("cuda", opts.device)
  end)

  it("turns switches on and off", function()
    assert.is_false(assert(parse("--no-batch")).batch)
    assert.is_true(assert(parse("--no-batch", "--batch")).batch)
  end)

  it("keeps words that are not options in rest, all of them after --", function()
    assert.same({ "a", "b" }, assert(parse("a", "--seed", "1", "b")).rest)
    local opts = assert(parse("--seed", "2", "--", "--seed", "3"))
    assert.equal(2, opts.seed)
    assert.same({ "--seed", "3" }, opts.rest)
    assert.equal(-1, assert(parse("--gamma", "-1")).gamma)
    assert.equal(-1, assert(parse("--gamma=-1")).gamma)
  end)

  it("refuses arguments that are not options unless it takes them", function()
    local opts, message = options.try_parse({ "a" }, { { "seed", 1 } })
    assert.is_nil(opts)
    assert.equal("unexpected argument 'a'", message)
  end)

  it("names what was wrong", function()
    local cases = {
      { { "--bogus" }, "unknown option '%-%-bogus'" },
      { { "--seed", "1.5" }, "%-%-seed needs a whole number, got '1.5'" },
      { { "--seed" }, "%-%-seed needs a value" },
      { { "--gamma", "x" }, "%-%-gamma needs a finite number, got 'x'" },
      { { "--gamma", "nan" }, "%-%-gamma needs a finite number" },
      { { "--gamma", "1e999" }, "%-%-gamma needs a finite number" },
      { { "-gamma", "0.5" }, "unknown option '%-gamma'" },
      { { "--sweep", "--seed", "3" }, "%-%-sweep needs a value" },
      { { "--device", "tpu" }, "%-%-device needs one of cpu, cuda, got 'tpu'" },
      { { "--batch=1" }, "%-%-batch is a switch and takes no value" },
      { { "--no-seed" }, "unknown option '%-%-no%-seed'" },
    }
    for _, case in ipairs(cases) do
      local opts, message = parse(table.unpack(case[1]))
      assert.is_nil(opts, table.concat(case[1], " "))
      assert.matches(case[2], message)
    end
  end)

  it("checks the least value of a number", function()
    local declared = { { "iters", 6, "", min = 1 }, { "lr", 0.1, "", min = 0 } }
    assert.equal(1, assert(options.try_parse({ "--iters", "1" }, declared)).iters)
    local opts, message = options.try_parse({ "--iters", "0" }, declared)
    assert.is_nil(opts)
    assert.equal("option --iters needs a whole number >= 1, got '0'", message)
    opts, message = options.try_parse({ "--lr=-0.5" }, declared)
    assert.is_nil(opts)
    assert.equal("option --lr needs a number >= 0, got '-0.5'", message)
  end)

  it("checks choices of numbers too", function()
    local declared = { { "size", 2, "", choices = { 2, 4 } } }
    assert.equal(4, assert(options.try_parse({ "--size", "4" }, declared)).size)
    local opts, message = options.try_parse({ "--size", "3" }, declared)
    assert.is_nil(opts)
    assert.equal("option --size needs one of 2, 4, got '3'", message)
  end)

  it("answers --help with the help text", function()
    local what, text = parse("--seed", "1", "--help")
    assert.equal("help", what)
    assert.matches("^usage: train.lua %[options%]", text)
    assert.matches("Trains something.", text, 1, true)
    assert.matches("%-%-seed N +random seed %(default: 543%)", text)
    assert.matches("%-%-batch, %-%-no%-batch +evaluate once per step %(default: on%)", text)
    assert.matches("%-%-device {cpu,cuda}", text)
    assert.matches("%-%-log%-interval N", text)
    assert.matches("%-h, %-%-help", text)
  end)

  it("refuses declarations it cannot use", function()
    assert.has_error(function() options.try_parse({}, { { "x" } }) end,
      "options.parse: option 'x' has no kind (give a default or " ..
      "kind='integer'|'number'|'string'|'boolean')")
    assert.has_error(function()
      options.try_parse({}, { { "x", 1 }, { "x", 2 } })
    end, "options.parse: option 'x' is declared twice")
    assert.has_error(function() options.try_parse({}, { { 3 } }) end,
      "options.parse: option 1 needs a name like 'log-interval'")
  end)
end)
