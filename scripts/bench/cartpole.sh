#!/usr/bin/env bash
# Batch CartPole benchmark: the batch RPC tutorial's main() on ember.
#
#   scripts/bench/cartpole.sh [--runs N] [--sizes 2,3,6,11]
#
# Runs examples/rpc/batch/reinforce.lua --sweep (10 episodes x 100 steps,
# seed 543, gamma 1.0; each time includes starting the processes, as the
# tutorial's do) N times (default 3) and prints one JSON line per world size
# with the median seconds of each mode, PyTorch's figures from FIGURES.md for
# the same world size, and the speed-ups (PyTorch's time / ember's).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

runs=3
sizes=2,3,6,11
while (($#)); do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --sizes) sizes=$2; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "cartpole.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "cartpole.sh: --runs needs a whole number >= 1" >&2; exit 2; }

scripts/build build >/dev/null
ember=build/bin/ember
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

for ((run = 1; run <= runs; run++)); do
  echo "cartpole.sh: sweep $run of $runs (world sizes $sizes)" >&2
  "$ember" run examples/rpc/batch/reinforce.lua --sweep "$sizes" \
    --out "$out/run$run" >/dev/null
done

"$ember" run - "$out" "$runs" <<'LUA'
local common = dofile("scripts/bench/common.lua")
local dir, runs = arg[1], tonumber(arg[2])
-- FIGURES.md: PyTorch 1.13, batch and no-batch seconds by world size.
local PYTORCH = { [2] = { 2.41, 2.20 }, [3] = { 3.83, 4.79 },
  [6] = { 7.05, 9.26 }, [11] = { 13.82, 17.15 } }

local function median(list)
  table.sort(list)
  local n = #list
  if n % 2 == 1 then return list[(n + 1) // 2] end
  return (list[n // 2] + list[n // 2 + 1]) / 2
end

local times, order = {}, {}
for run = 1, runs do
  for line in io.lines(("%s/run%d.csv"):format(dir, run)) do
    local n, b, nb = line:match("^(%d+),([%d.]+),([%d.]+)$")
    if n then
      n = tonumber(n)
      if times[n] == nil then
        times[n] = { batch = {}, nobatch = {} }
        order[#order + 1] = n
      end
      table.insert(times[n].batch, tonumber(b))
      table.insert(times[n].nobatch, tonumber(nb))
    end
  end
end

for _, n in ipairs(order) do
  local fields = { world_size = n, runs = runs,
    batch_s = median(times[n].batch), nobatch_s = median(times[n].nobatch) }
  fields.batch_faster = fields.batch_s < fields.nobatch_s
  local pt = PYTORCH[n]
  if pt then
    fields.pytorch_batch_s, fields.pytorch_nobatch_s = pt[1], pt[2]
    fields.speedup_batch = pt[1] / fields.batch_s
    fields.speedup_nobatch = pt[2] / fields.nobatch_s
  end
  common.emit("cartpole", fields)
end
LUA
