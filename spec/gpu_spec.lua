-- The GPU checks (spec/gpu/run.lua) run as a user would run them, in a
-- subprocess: on this machine's CUDA device if it has one (pending, with
-- the reason, if not), on one and on two simulated devices
-- (EMBER_CUDA_SIM), and with the CPU standing in for the device (--cpu),
-- which tests the checks themselves.
local example = require "spec.support.example"
local EMBER, sh = example.EMBER, example.sh

local RUN = EMBER .. " run spec/gpu/run.lua"
local SECONDS = 300

-- Runs the checks with `env` settings (a shell prefix) and `args`.
local function run(env, args)
  return sh(("env -u EMBER_CUDA_SIM %s %s %s"):format(env or "", RUN,
    args or ""), SECONDS)
end

-- The counts of the last line, "N passed, M failed, K skipped". A run
-- without one ended early: a crash in the check after the last one shown.
local function summary(output, status)
  local p, f, s = output:match("(%d+) passed, (%d+) failed, (%d+) skipped\n?$")
  if p == nil then
    local last = output:match("([^\n]*)\n[^\n]*\n?$") or ""
    assert.is_not_nil(p, ("the run ended without its summary line (exit "
      .. "status %s), in the check after %q (--verbose names each check "
      .. "before it runs); its output:\n%s"):format(tostring(status), last,
        output))
  end
  return tonumber(p), tonumber(f), tonumber(s)
end

local function lines(output, prefix)
  local list = {}
  for line in output:gmatch("[^\n]+") do
    if line:sub(1, #prefix) == prefix then list[#list + 1] = line end
  end
  return list
end

describe("spec/gpu/run.lua", function()
  it("lists the checks and filters them by name", function()
    local out, status = run(nil, "--list")
    assert.equal(0, status, out)
    local n = tonumber(out:match("(%d+) checks\n$"))
    assert.is_true(n ~= nil and n >= 30, out)
    out, status = run(nil, "--list --filter '^matmul: '")
    assert.equal(0, status, out)
    for line in out:gmatch("[^\n]+") do
      assert.is_truthy(line:match("^matmul: ") or line:match("^%d+ checks$"),
        line)
    end
    out, status = run(nil, "--no-such-flag")
    assert.equal(2, status, out)
  end)

  it("passes with the CPU standing in for the device (--cpu)", function()
    local out, status = run(nil, "--cpu")
    local passed, failed = summary(out, status)
    assert.equal(0, failed, out)
    assert.equal(0, status, out)
    assert.is_true(passed >= 30, out)
  end)

  it("runs on this machine's CUDA device, or says why every check is skipped",
    function()
      local out, status = run()
      local passed, failed, skipped = summary(out, status)
      local reason = out:match("^device: none %((.-)%)\n")
      if reason == nil then
        assert.is_truthy(out:match("^device: cuda:0 "), out)
        assert.equal(0, failed, out)
        assert.equal(0, status, out)
        assert.is_true(passed >= 30, out)
        return
      end
      -- No device: nothing may pass or fail silently.
      assert.equal(0, status, out)
      assert.equal(0, passed, out)
      assert.equal(0, failed, out)
      assert.is_true(skipped >= 30, out)
      local skips = lines(out, "skip ")
      assert.equal(skipped, #skips, out)
      for _, line in ipairs(skips) do
        assert.is_truthy(line:find(": no CUDA device", 1, true), line)
      end
      pending("no GPU: " .. reason)
    end)

  it("passes on one simulated CUDA device (EMBER_CUDA_SIM=1)", function()
    local out, status = run("EMBER_CUDA_SIM=1")
    local passed, failed = summary(out, status)
    assert.is_truthy(out:match("^device: cuda:0 [^\n]*%(simulated"), out)
    assert.equal(0, failed, out)
    assert.equal(0, status, out)
    assert.is_true(passed >= 30, out)
  end)

  it("passes on two simulated CUDA devices, the two-device checks too",
    function()
      local out, status = run("EMBER_CUDA_SIM=2")
      local passed, failed, skipped = summary(out, status)
      assert.equal(0, failed, out)
      assert.equal(0, skipped, out)
      assert.equal(0, status, out)
      assert.is_true(passed >= 30, out)
      local two = 0
      for _ in out:gmatch("\nok [%w_]+: two devices") do two = two + 1 end
      assert.is_true(two >= 3, out)
    end)
end)
