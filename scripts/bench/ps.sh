#!/usr/bin/env bash
# Batch-updating parameter server benchmark: runs
# examples/rpc/batch/parameter_server.lua (4 trainers x 6 iterations of the
# MLP 12288 -> 512 -> 30 by default) a few times and prints one JSON object
# per run, then a summary with the median, the best and the speedup over
# PyTorch 1.13's 5.04 s for the same work (../shared/reference/FIGURES.md).
# "seconds" is the example's own figure: from the first rpc_async to the last
# trainer's return; "launch_s" is the whole command, starting the processes
# included.
#
#   scripts/bench/ps.sh [--runs 3] [--trainers 4] [--iters 6] [-- EXAMPLE ARGS]
set -euo pipefail
cd "$(dirname "$0")/../.."

runs=3
trainers=4
iters=6
pytorch_s=5.04
extra=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --trainers) trainers=$2; shift 2 ;;
    --iters) iters=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help)
      sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
      exit 0 ;;
    *) echo "ps.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
for n in "$runs" "$trainers" "$iters"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || {
    echo "ps.sh: --runs, --trainers and --iters take whole numbers >= 1" >&2
    exit 2
  }
done

# The build is brought up to date (as scripts/bench/cartpole.sh does): a
# stale binary would time old code. EMBER_BIN names another one instead.
ember=${EMBER_BIN:-}
if [[ -z $ember ]]; then
  scripts/build build >/dev/null
  ember=build/bin/ember
fi

now() { date +%s.%N; }
# calc EXPR: floating-point arithmetic (awk, as bc may not be installed).
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }

seconds=()
for ((run = 1; run <= runs; run++)); do
  start=$(now)
  if ! out=$(timeout 300 "$ember" launch -n $((trainers + 1)) \
      examples/rpc/batch/parameter_server.lua --trainers "$trainers" \
      --iters "$iters" --no-log ${extra[@]+"${extra[@]}"} 2>&1); then
    echo "ps.sh: run $run failed:" >&2
    echo "$out" >&2
    exit 1
  fi
  launch_s=$(calc "$(now) - $start")
  s=$(echo "$out" | sed -n 's/.*trainers x [0-9]* iterations: \([0-9.]*\) s.*/\1/p')
  if [[ -z $s ]]; then
    echo "ps.sh: run $run printed no time:" >&2
    echo "$out" >&2
    exit 1
  fi
  seconds+=("$s")
  printf '{"bench":"ps","run":%d,"trainers":%d,"iters":%d,"seconds":%.3f,"launch_s":%.3f}\n' \
    "$run" "$trainers" "$iters" "$s" "$launch_s"
done

sorted=($(printf '%s\n' "${seconds[@]}" | sort -g))
best=${sorted[0]}
median=${sorted[$(((runs - 1) / 2))]}
if ((runs % 2 == 0)); then
  median=$(calc "(${sorted[runs / 2 - 1]} + ${sorted[runs / 2]}) / 2")
fi
# PyTorch's figure is for 4 trainers x 6 iterations only.
if [[ $trainers == 4 && $iters == 6 && ${#extra[@]} -eq 0 ]]; then
  printf '{"bench":"ps","trainers":%d,"iters":%d,"runs":%d,"seconds":%.3f,"best_s":%.3f,"pytorch_s":%.2f,"speedup":%.2f}\n' \
    "$trainers" "$iters" "$runs" "$median" "$best" "$pytorch_s" \
    "$(calc "$pytorch_s / $median")"
else
  printf '{"bench":"ps","trainers":%d,"iters":%d,"runs":%d,"seconds":%.3f,"best_s":%.3f}\n' \
    "$trainers" "$iters" "$runs" "$median" "$best"
fi
