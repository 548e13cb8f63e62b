#!/usr/bin/env bash
# The rehearsal's cost: `polusctl apply` of the 10-function bench patch to bench_target
# (8 threads) holding 0, 1 and 4 GiB of touched heap, with the rehearsal (the default: the
# load tried first in a copy of the process) and with --no-rehearsal, interleaved. The copy
# is a clone of the target, so its cost grows with the target's page tables; the difference
# per GiB is what an operator weighs before --no-rehearsal on a huge process. Writes its
# section of RELIABILITY.md.
#   bench/rehearsal-cost.sh [REPS]     (default 7 per cell)
# polusctl runs in-process here: these runs time and kill the engine itself, not polusd.
export POLUS_NO_DAEMON=1
set -uo pipefail
cd "$(dirname "$0")/.."
reps=${1:-7}
build=build
polusctl="$build/tools/polusctl --agent $PWD/$build/agent/libpolus-agent.so"
patch=$build/bench/patches/bench-10fn.so
work=$(mktemp -d)
target=""
trap 'kill $target 2>/dev/null; rm -rf "$work"' EXIT

median() { sort -n | awk '{v[NR]=$1} END {if (NR) print v[int((NR+1)/2)]; else print "nan"}'; }
json_field() { grep -o "\"$1\":[0-9]*" | head -1 | cut -d: -f2; }

rows=""
for mb in 0 1024 4096; do
  mkfifo "$work/in.$mb"
  "$build/bench/bench_target" --threads 8 --touch-mb "$mb" <"$work/in.$mb" >"$work/out.$mb" 2>&1 &
  target=$!
  exec 3>"$work/in.$mb"  # keeps its stdin open
  for _ in $(seq 600); do grep -q '^READY' "$work/out.$mb" && break; sleep 0.1; done
  $polusctl apply "$target" "$patch" >/dev/null && $polusctl rollback "$target" >/dev/null  # agent loaded once
  : >"$work/with"; : >"$work/without"; : >"$work/with_cli"; : >"$work/without_cli"; : >"$work/with_pause"; : >"$work/without_pause"
  for _ in $(seq "$reps"); do
    for mode in with without; do
      flag=""; [ $mode = without ] && flag=--no-rehearsal
      began=$(date +%s%N)
      out=$($polusctl apply "$target" "$patch" $flag --json 2>&1) || { echo "apply failed: $out" >&2; exit 1; }
      echo $(( ($(date +%s%N) - began) / 1000 )) >>"$work/${mode}_cli"
      json_field apply_wall_ns <<<"$out" | awk '{print $1 / 1000}' >>"$work/$mode"
      json_field pause_ns <<<"$out" | awk '{print $1 / 1000}' >>"$work/${mode}_pause"
      $polusctl rollback "$target" >/dev/null || exit 1
    done
  done
  rss=$(awk '/^VmRSS/{print $2}' /proc/"$target"/status)
  with=$(median <"$work/with"); without=$(median <"$work/without")
  with_cli=$(median <"$work/with_cli"); without_cli=$(median <"$work/without_cli")
  with_pause=$(median <"$work/with_pause"); without_pause=$(median <"$work/without_pause")
  echo "$mb MiB: engine $with us with rehearsal, $without us without; polusctl $with_cli / $without_cli us" >&2
  rows+="| $mb MiB (VmRSS $((rss / 1024)) MiB) | $(awk -v a="$with" 'BEGIN{printf "%.2f", a/1000}') | $(awk -v a="$without" 'BEGIN{printf "%.2f", a/1000}') | $(awk -v a="$with" -v b="$without" 'BEGIN{printf "%.2f", (a-b)/1000}') | $(awk -v a="$with_cli" 'BEGIN{printf "%.2f", a/1000}') | $(awk -v a="$with_pause" -v b="$without_pause" 'BEGIN{printf "%.2f / %.2f", a/1000, b/1000}') |"$'\n'
  eval "cost_$mb=$(awk -v a="$with" -v b="$without" 'BEGIN{print a-b}')"
  exec 3>&-
  kill "$target" 2>/dev/null; wait "$target" 2>/dev/null
done
per_gib=$(awk -v a="$cost_4096" -v b="$cost_0" 'BEGIN{printf "%.2f", (a-b)/4/1000}')

source bench/reliability-section.sh
{
  cat <<EOF
## The rehearsal's cost

Last run $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD), \`bench/rehearsal-cost.sh ${reps}\`: \`polusctl apply\`
of the 10-function bench patch to \`bench_target\` (8 threads) holding 0, 1 and 4 GiB of touched heap,
with the rehearsal and with \`--no-rehearsal\`, interleaved; medians of ${reps}, milliseconds (engine =
\`apply_wall_ns\`; polusctl = process start to exit). The copy is a clone of the target: its cost
grows with the target's page tables.

| target memory | engine, rehearsed | engine, --no-rehearsal | rehearsal | polusctl, rehearsed | longest pause, rehearsed / not |
|---|---|---|---|---|---|
${rows}
The rehearsal costs about **${per_gib} ms per GiB** of resident memory beyond the fixed part
(from the 0 and 4 GiB rows). Part of it is a pause: clone(2) copies the target's page tables
while every thread of the target is stopped (the no-thread-in-the-loader check and the copy must
happen at one instant) — the "longest pause" column, the same cost a redis BGSAVE fork has. The
rest (loading in the copy, then the copy's exit releasing its copy-on-write mappings) runs while
the target serves. polusctl warns when the copy's pause passed 10 ms; \`--no-rehearsal\` skips it.
EOF
} >"$work/section.md"
write_reliability_section rehearsal-cost bench/rehearsal-cost.sh "$work/section.md"
echo "==> wrote RELIABILITY.md"
