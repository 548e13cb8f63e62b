#!/usr/bin/env bash
# What going through polusd costs: `polusctl apply` of the 10-function bench patch to
# bench_target (8 threads), run in polusctl itself (--no-daemon) and through a polusd on a
# socket of this run's own, interleaved, each followed by a rollback. The engine reports its own
# time (apply_wall_ns, measured where it runs); everything else a command costs is broken down in
# the same run: polusctl and polusd write when each step happened ($POLUS_TIMINGS, CLOCK_REALTIME
# microseconds, as bash's $EPOCHREALTIME read around the whole command). Also: polusctl
# --version (the client's start alone) against /bin/true (starting any process from this
# script: the floor). Writes its section of RELIABILITY.md.
#   bench/polusd-overhead.sh [REPS]     (default 15 per mode; $POLUS_BUILD: the build dir, default build)
set -uo pipefail
cd "$(dirname "$0")/.."
reps=${1:-15}
build=${POLUS_BUILD:-build}
export POLUS_AGENT=$build/agent/libpolus-agent.so
[ "${POLUS_AGENT:0:1}" = / ] || POLUS_AGENT=$PWD/$POLUS_AGENT
polusctl=$build/tools/polusctl
patch=$build/bench/patches/bench-10fn.so
work=$(mktemp -d)
export POLUS_SOCKET=$work/polusd.sock
export POLUS_AUDIT_LOG=$work/audit.log
target=""
cleanup() {
  kill "$target" 2>/dev/null
  [ -f "$POLUS_SOCKET.lock" ] && kill "$(cat "$POLUS_SOCKET.lock")" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

mkfifo "$work/in"
"$build/bench/bench_target" --threads 8 <"$work/in" >"$work/out" 2>&1 &
target=$!
exec 3>"$work/in"
for _ in $(seq 600); do grep -q '^READY' "$work/out" && break; sleep 0.1; done
POLUS_NO_DAEMON=1 $polusctl apply "$target" "$patch" >/dev/null && POLUS_NO_DAEMON=1 $polusctl rollback "$target" >/dev/null
$polusctl apply "$target" "$patch" >/dev/null && $polusctl rollback "$target" >/dev/null  # polusd started

# One timed command, run the same way for every row (its output captured): "MODE BEGAN ENDED
# [ENGINE_NS]" then the timings line it wrote ({} for none), into $work/runs.
timed() {
  local mode=$1 began ended out
  shift
  : >"$work/timings"
  began=$EPOCHREALTIME
  out=$(POLUS_TIMINGS=$work/timings "$@" 2>&1) || { echo "$mode failed: $out" >&2; exit 1; }
  ended=$EPOCHREALTIME
  printf '%s %s %s %s\n' "$mode" "${began/./}" "${ended/./}" "$(grep -o '"apply_wall_ns":[0-9]*' <<<"$out" | head -1 | cut -d: -f2)" >>"$work/runs"
  if [ -s "$work/timings" ]; then tail -1 "$work/timings" >>"$work/runs"; else echo "{}" >>"$work/runs"; fi
}
for _ in $(seq "$reps"); do
  for mode in local daemon; do
    if [ $mode = local ]; then export POLUS_NO_DAEMON=1; else unset POLUS_NO_DAEMON; fi
    timed "$mode" $polusctl apply "$target" "$patch" --json
    $polusctl rollback "$target" >/dev/null || exit 1
  done
  unset POLUS_NO_DAEMON
  timed version $polusctl --version
  timed true /bin/true
done

# Medians of every step, in milliseconds (the steps of one run add up to its wall time).
python3 - "$work/runs" >"$work/steps" <<'EOF'
import json, statistics, sys
lines = open(sys.argv[1]).read().splitlines()
rows = {}
for head, timing in zip(lines[0::2], lines[1::2]):
    mode, began, ended, *engine = head.split()
    t = json.loads(timing)
    began, ended = int(began), int(ended)
    row = {"wall": ended - began}
    if mode in ("local", "daemon"):
        e = int(engine[0]) / 1000 if engine else 0.0
        row["engine"] = e
        row["start"] = t["main"] - began
        row["parse"] = t["parsed"] - t["main"]
        call = (t if mode == "local" else t["daemon"]).get("engine_call", e)  # (older builds: not noted)
        row["unclocked"] = call - e
        if mode == "local":
            row["outside"] = t["ran"] - t["parsed"] - call
            row["exit"] = ended - t["ran"]
        else:
            d = t["daemon"]
            row["connect"] = t["sent"] - t["parsed"]
            row["to_polusd"] = d["read"] - t["sent"]
            row["before_run"] = d["run_begin"] - d["read"]
            row["outside"] = d["run_end"] - d["run_begin"] - call
            row["after_run"] = d["answer"] - d["run_end"]
            row["reply"] = t["answered"] - d["answer"]
            row["exit"] = ended - t["answered"]
        row["beyond"] = row["wall"] - e
        row["beyond_call"] = row["wall"] - call
    rows.setdefault(mode, []).append(row)
for mode, runs in rows.items():
    for key in runs[0]:
        print(f"{mode}_{key}={statistics.median(r[key] for r in runs) / 1000:.2f}")
floor = statistics.median(r["wall"] for r in rows["true"])
beyond = statistics.median(r["beyond"] - floor for r in rows["daemon"])
beyond_call = statistics.median(r["beyond_call"] - floor for r in rows["daemon"])
print(f"daemon_beyond_floor={beyond / 1000:.2f}")
print(f"daemon_beyond_call_floor={beyond_call / 1000:.2f}")
print(f"verdict={'met' if beyond <= 1000 else 'MISSED'}")
print(f"verdict_call={'met' if beyond_call <= 1000 else 'MISSED'}")
EOF
source "$work/steps"
cat "$work/steps" >&2

source bench/reliability-section.sh
cat >"$work/section.md" <<EOF2
## What going through polusd costs

Last run $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD), \`bench/polusd-overhead.sh ${reps}\`, load average
$(cut -d' ' -f1-3 /proc/loadavg) at the end: \`polusctl apply --json\` of the 10-function bench patch to
\`bench_target\` (8 threads), in polusctl itself (\`--no-daemon\`) and through polusd, interleaved;
medians of ${reps}, milliseconds. Engine = \`apply_wall_ns\`, the engine's own time where it runs; wall =
from before this script starts polusctl to after it exits. Each step is measured in the same runs
(polusctl and polusd note when each happened, \`\$POLUS_TIMINGS\`), so a row's steps add up to
about its wall time (medians do not add exactly).

| step | \`--no-daemon\` | through polusd |
|---|---|---|
| polusctl's start (exec, libraries, to \`main\`) | ${local_start} | ${daemon_start} |
| parsing the command line, building the request | ${local_parse} | ${daemon_parse} |
| connecting to polusd, sending the request | | ${daemon_connect} |
| polusd reading it (accept, its thread) | | ${daemon_to_polusd} |
| polusd before the command (authorising, cancel watch) | | ${daemon_before_run} |
| the command outside the engine (options, targets, output; in polusctl also loading its engine module) | ${local_outside} | ${daemon_outside} |
| **the engine**, its own clock (\`apply_wall_ns\`) | ${local_engine} | ${daemon_engine} |
| the engine's call beyond its own clock (access check, audit record, the target's threads let go) | ${local_unclocked} | ${daemon_unclocked} |
| polusd after the command (to its answer) | | ${daemon_after_run} |
| the answer reaching polusctl | | ${daemon_reply} |
| writing the output, exit | ${local_exit} | ${daemon_exit} |
| **wall** | ${local_wall} | ${daemon_wall} |
| wall − engine's own clock | ${local_beyond} | ${daemon_beyond} |
| wall − engine's whole call | ${local_beyond_call} | ${daemon_beyond_call} |

Starting any process from this script and seeing it exit (\`/bin/true\`) takes ${true_wall} ms, the floor of
any command; \`polusctl --version\` (the client's start and exit alone) ${version_wall} ms. With the floor
taken off, an apply through polusd costs **${daemon_beyond_floor} ms** beyond the engine's own clock and
**${daemon_beyond_call_floor} ms** beyond the engine's whole call (\`polus::apply_patch\`, which also checks access, writes the
audit record and lets the target's threads go after its clock stops). Target: at most 1 ms beyond the
engine's own time — **${verdict}** against its clock, **${verdict_call}** against its whole call. The machine's load
shows in every step: on a loaded machine each wake-up (polusd's thread, the client, this script)
waits for a CPU.
EOF2
write_reliability_section polusd-overhead bench/polusd-overhead.sh "$work/section.md"
echo "==> wrote RELIABILITY.md"
