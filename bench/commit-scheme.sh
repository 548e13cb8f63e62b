#!/usr/bin/env bash
# The two commit schemes side by side, in one run: `pause` (every thread stopped at once) and
# `trap` (an int3 first, the threads checked one at a time; DESIGN.md step 4b), on greeters of 8
# and 250 workers, idle and under load (build/bench/polus-commit-bench). Writes its section of
# BENCHMARKS.md (kept when bench/run.sh rewrites the rest).
#   bench/commit-scheme.sh [REPS]     (default 9 per cell and scheme)
set -euo pipefail
cd "$(dirname "$0")/.."
reps=${1:-9}
build=${BUILD:-build}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$build/bench/polus-commit-bench" "$reps" >"$work/table.md"
{
  cat <<EOF2
## Commit schemes

Last run $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD), \`bench/commit-scheme.sh ${reps}\` on
$(nproc) CPUs (load average $(cut -d' ' -f1-3 /proc/loadavg) at the end: other work on the machine adds noise).
greeter-v0-v1.so applied to greeters of 8 and 250 workers (plus 5 threads of their own), idle and
with 4 clients sending requests as fast as replies come, then rolled back; \`--commit pause\` and
\`--commit trap\` interleaved, ${reps} times each, without the rehearsal (its copy is a pause of its
own: RELIABILITY.md). Milliseconds, medians (max in brackets). *Longest hold*: the longest time
one thread was held by the commit, counted from the moment it was asked to stop (the pause's whole
length for \`pause\`; for \`trap\`, the longest of its looks at single threads) — an upper bound, as
it includes the time a thread ran, or waited for a CPU, before it stopped. *From stop seen*: the
same counted from the moment the stop was seen (for \`pause\`, from the last thread's) — a lower
bound.
*Commit*: from the commit's first stop to its last write.

EOF2
  cat "$work/table.md"
  cat <<'EOF2'

The trap commit trades a longer commit (three looks at every thread, one at a time) for holds that
do not grow with the thread count. Under load on a busy machine, a single look includes waiting
for the CPU (ours and the thread's), so its tail follows the scheduler's.
EOF2
} >"$work/section.md"
source bench/reliability-section.sh
write_report_section BENCHMARKS.md commit-scheme bench/commit-scheme.sh "$work/section.md"
echo "==> wrote BENCHMARKS.md"
