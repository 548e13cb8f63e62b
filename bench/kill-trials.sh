#!/usr/bin/env bash
# Kill trials: polusctl is stopped by a signal (SIGKILL, SIGINT, SIGHUP) at a random instant
# of apply and rollback, for a code patch and a data patch, on a greeter server under client
# load. After each trial the target must be alive, with no thread left stopped or traced,
# and the next `polusctl rollback` commands must see the interrupted operation through and
# leave the server answering v0 with no patch recorded. Writes its section of RELIABILITY.md.
#   bench/kill-trials.sh [TRIALS_PER_PHASE]     (default 200; the suite's kill_test runs 24)
# polusctl runs in-process here: these runs time and kill the engine itself, not polusd.
export POLUS_NO_DAEMON=1
set -uo pipefail
cd "$(dirname "$0")/.."
trials=${1:-200}
build=build
polusctl="$build/tools/polusctl --agent $PWD/$build/agent/libpolus-agent.so"
work=$(mktemp -d)
trap 'kill $server $load 2>/dev/null; rm -rf "$work"' EXIT

"$build/test-servers/greeter-v0" --port 0 --workers 4 >"$work/server.out" 2>&1 &
server=$!
for _ in $(seq 50); do grep -q '^PORT ' "$work/server.out" && break; sleep 0.1; done
port=$(awk '/^PORT /{print $2}' "$work/server.out")
python3 - "$port" >"$work/load.out" 2>&1 <<'PY' &
import socket, sys, time
port = int(sys.argv[1]); ok = bad = 0
while True:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"HELLO k\n"); reply = s.recv(200); s.close()
        if reply.startswith(b"H"): ok += 1
        else: bad += 1
    except Exception:
        bad += 1; time.sleep(0.01)
    if (ok + bad) % 200 == 0:
        print(ok, bad, flush=True)
PY
load=$!

held_threads() {  # threads still traced or in a tracing stop
  local n=0
  for t in /proc/"$server"/task/*; do
    local state tracer
    state=$(awk '/^State/{print $2}' "$t/status" 2>/dev/null)
    tracer=$(awk '/^TracerPid/{print $2}' "$t/status" 2>/dev/null)
    if [ "$state" = t ] || [ "${tracer:-0}" != 0 ]; then n=$((n + 1)); fi
  done
  echo $n
}

declare -A done_ deaths held inconsistent
phases="code-apply code-rollback data-apply data-rollback"
for phase in $phases; do
  done_[$phase]=0; deaths[$phase]=0; held[$phase]=0; inconsistent[$phase]=0
  case $phase in
    code-*) patch=$build/test-servers/patches/greeter-v0-v1.so; max_us=8000 ;;
    data-*) patch=$build/test-servers/patches/greeter-v0-v1-data.so; max_us=25000 ;;
  esac
  for i in $(seq "$trials"); do
    sig=$(shuf -n1 -e KILL INT HUP)
    if [[ $phase == *rollback ]]; then
      $polusctl apply "$server" "$patch" --sync-timeout 100 >/dev/null 2>&1
      $polusctl rollback "$server" --sync-timeout 100 >/dev/null 2>&1 &
    else
      $polusctl apply "$server" "$patch" --sync-timeout 100 >/dev/null 2>&1 &
    fi
    tool=$!
    sleep "$(printf '0.%06d' $(( (RANDOM * 32768 + RANDOM) % max_us )))"
    kill -"$sig" "$tool" 2>/dev/null
    wait "$tool" 2>/dev/null
    sleep 0.02
    done_[$phase]=$((done_[$phase] + 1))
    if ! kill -0 "$server" 2>/dev/null; then
      deaths[$phase]=$((deaths[$phase] + 1))
      echo "$phase trial $i ($sig): the target died" >&2
      break 2
    fi
    [ "$(held_threads)" = 0 ] || held[$phase]=$((held[$phase] + 1))
    for _ in 1 2 3 4 5 6; do $polusctl rollback "$server" --sync-timeout 2000 >/dev/null 2>&1 || break; done
    reply=$(exec 3<>"/dev/tcp/127.0.0.1/$port"; printf 'HELLO k\n' >&3; IFS= read -r line <&3; echo "$line")
    status=$($polusctl status "$server" 2>&1)
    if [ "$reply" != "Hello, k! (v0)" ] || ! grep -q "no patches applied" <<<"$status"; then
      inconsistent[$phase]=$((inconsistent[$phase] + 1))
      echo "$phase trial $i ($sig): after recovery the server says '$reply', status: $status" >&2
    fi
  done
  echo "==> $phase: ${done_[$phase]} trials, ${deaths[$phase]} deaths, ${held[$phase]} with threads held, ${inconsistent[$phase]} inconsistent"
done
kill "$load" 2>/dev/null; wait "$load" 2>/dev/null
read -r ok bad < <(tail -1 "$work/load.out")

source bench/reliability-section.sh
{
  cat <<EOF
## Polusctl killed mid-operation

Last run $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD), \`bench/kill-trials.sh ${trials}\` on this project's
2-core machine: the greeter (4 workers) under a client loop, polusctl sent SIGKILL, SIGINT or SIGHUP
(chosen at random) 0–8 ms (code patch) or 0–25 ms (data patch) into the command. After each trial: the
target alive, no thread stopped or traced, then \`polusctl rollback\` until nothing is left, and the
server must answer v0 with no patch recorded. The suite's \`kill_test\` runs 24 such trials.

| phase | trials | target deaths | threads left held | state inconsistent after recovery |
|---|---|---|---|---|
EOF
  for phase in $phases; do
    echo "| $phase | ${done_[$phase]} | ${deaths[$phase]} | ${held[$phase]} | ${inconsistent[$phase]} |"
  done
  echo
  echo "Client requests during the run: ${ok:-0} answered, ${bad:-0} failed."
} >"$work/section.md"
write_reliability_section kill-trials bench/kill-trials.sh "$work/section.md"
echo "==> wrote RELIABILITY.md"
