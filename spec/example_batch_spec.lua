-- examples/rpc/batch/reinforce.lua: the batch-processing CartPole of the
-- batch RPC tutorial, run small in each mode, learning, and in sweep mode.
local example = require "spec.support.example"
local EMBER, sh = example.EMBER, example.sh
local SCRIPT = "examples/rpc/batch/reinforce.lua"

local launch = example.launcher(SCRIPT)

-- The (last reward, average reward) pairs the agent printed, in order.
local function episodes(output)
  local list = {}
  for k, last, average in output:gmatch(
      "%[rank 0%] Episode (%d+)\tLast reward: ([%d.]+)\tAverage reward: ([%d.]+)\n") do
    list[#list + 1] = { episode = tonumber(k), last = tonumber(last),
      average = tonumber(average) }
  end
  return list
end

local function read_file(path)
  local f = io.open(path, "rb")
  if f == nil then return nil end
  local text = f:read("a")
  f:close()
  return text
end

describe("examples/rpc/batch/reinforce.lua", function()
  for _, mode in ipairs { "--batch", "--no-batch", "--batcher" } do
    it("runs its episodes with " .. mode, function()
      local out, status = launch(3, mode .. " --num-episode 3 --num-steps 40")
      assert.equal(0, status, out)
      local list = episodes(out)
      assert.equal(3, #list, out)
      for i, e in ipairs(list) do
        assert.equal(i - 1, e.episode, out)
        -- A game lasts at least 8 steps and is cut at --num-steps.
        assert.is_true(e.last >= 8 and e.last <= 40, out)
      end
      local name = mode:sub(3):gsub("%-", "%%-")
      assert.matches("3 episodes of 40 steps, 2 observers, " .. name ..
        ": [%d.]+ s", out)
      assert.not_matches("leak", out)
      -- ember's only line is rank 0's on the listen rule.
      assert.not_matches("ember: [^n]", out)
      assert.matches("ember: no EMBER_SECRET: workers accept connections on "
        .. "loopback only", out, 1, true)
    end)
  end

  it("learns: the running reward rises over a fixed-seed run", function()
    local out, status = launch(3, "--batch --num-episode 20 --seed 1")
    assert.equal(0, status, out)
    local list = episodes(out)
    assert.equal(20, #list, out)
    local late = 0
    for i = 16, 20 do late = late + list[i].average / 5 end
    assert.is_true(late > 2 * list[1].average,
      ("running reward %.2f at first, %.2f over the last five\n%s"):format(
        list[1].average, late, out))
  end)

  it("times world sizes in both modes and writes the CSV and figure", function()
    local out_prefix = os.tmpname()
    local out, status = sh(("%s run %s --sweep 2,3 --num-episode 2 " ..
      "--num-steps 20 --out %s"):format(EMBER, SCRIPT, out_prefix), 120)
    assert.equal(0, status, out)
    local rows = {}
    for n, b, nb in out:gmatch("\n(%d+), ([%d.]+), ([%d.]+)") do
      rows[#rows + 1] = { tonumber(n), tonumber(b), tonumber(nb) }
    end
    assert.matches("^world_size, batch_s, nobatch_s\n", out)
    assert.equal(2, #rows, out)
    assert.equal(2, rows[1][1])
    assert.equal(3, rows[2][1])
    for _, row in ipairs(rows) do
      assert.is_true(row[2] > 0 and row[2] < 60, out)
      assert.is_true(row[3] > 0 and row[3] < 60, out)
    end
    local csv = read_file(out_prefix .. ".csv")
    assert.matches("^world_size,batch_s,nobatch_s\n2,[%d.]+,[%d.]+\n3,[%d.]+,[%d.]+\n$", csv)
    local png = read_file(out_prefix .. ".png")
    assert.is_not_nil(png, out)
    assert.equal("\137PNG", png:sub(1, 4))
    assert.matches("wrote .*%.csv and .*%.png", out)
    os.remove(out_prefix)
    os.remove(out_prefix .. ".csv")
    os.remove(out_prefix .. ".png")
  end)

  it("says what is wrong with bad arguments", function()
    local out, status = sh(("%s run %s --sweep 1..3"):format(EMBER, SCRIPT), 30)
    assert.equal(2, status, out)
    assert.matches("--sweep needs world sizes >= 2", out, 1, true)

    out, status = sh(("%s run %s"):format(EMBER, SCRIPT), 30)
    assert.equal(2, status, out)
    assert.matches("needs an agent and at least one observer", out, 1, true)
    assert.matches("ember launch -n 2", out, 1, true)

    out, status = launch(2, "--num-episode ten", 30)
    assert.is_not.equal(0, status)
    assert.matches("--num-episode needs a whole number, got 'ten'", out, 1, true)

    out, status = launch(2, "--num-steps 0", 30)
    assert.is_not.equal(0, status)
    assert.matches("--num-steps needs a whole number >= 1, got '0'", out, 1, true)

    out, status = sh(("%s run %s --help"):format(EMBER, SCRIPT), 30)
    assert.equal(0, status, out)
    assert.matches("usage: ember launch %-n N examples/rpc/batch/reinforce.lua", out)
    assert.matches("--batch, --no-batch", out, 1, true)
  end)

  it("refuses --device cuda where there is no GPU", function()
    local ember = require "ember"
    if ember.cuda.is_available() then
      pending("this machine has a GPU")
      return
    end
    local out, status = launch(2, "--device cuda --num-episode 1", 30)
    assert.is_not.equal(0, status)
    assert.matches("--device cuda: no CUDA device here", out, 1, true)
  end)
end)
