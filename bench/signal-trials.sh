#!/usr/bin/env bash
# Signal trials: standard and real-time signals sent to a greeter under client load while
# polusctl applies and rolls back code and data patches in a loop on it, then while the same
# loop patches a decoy greeter instead (the baseline: the same CPU load, nothing held). The greeter counts what its handler received.
# Writes its section of RELIABILITY.md.
#   bench/signal-trials.sh [CYCLES]     (default 130)
# polusctl runs in-process here: these runs time and kill the engine itself, not polusd.
export POLUS_NO_DAEMON=1
set -uo pipefail
cd "$(dirname "$0")/.."
cycles=${1:-130}
build=build
polusctl="$build/tools/polusctl --agent $PWD/$build/agent/libpolus-agent.so"
work=$(mktemp -d)
server=""; load=""
trap 'kill $server $load 2>/dev/null; rm -rf "$work"' EXIT

start_server() {
  "$build/test-servers/greeter-v0" --port 0 --workers 4 >"$work/server.out" 2>&1 &
  server=$!
  for _ in $(seq 50); do grep -q '^PORT ' "$work/server.out" && break; sleep 0.1; done
  port=$(awk '/^PORT /{print $2}' "$work/server.out")
  python3 - "$port" >"$work/load.out" 2>&1 <<'PY' &
import socket, sys
port = int(sys.argv[1])
while True:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"HELLO k\n"); s.recv(200); s.close()
    except Exception:
        pass
PY
  load=$!
}

stop_server() {
  kill "$load" "$server" 2>/dev/null
  wait "$load" "$server" 2>/dev/null
}

# Sends signals to $server until the file $1 exists: SIGUSR1 paced on the greeter's STATS
# counter (the next once the previous was counted), SIGUSR2 every 2 ms whatever happened
# (unpaced), SIGRTMIN twice per SIGUSR1 (queued, never merged). Prints "usr1_sent usr2_sent
# rt_sent usr1_got usr2_got rt_got".
send_signals() {
  python3 - "$server" "$port" "$1" <<'PY'
import os, signal, socket, sys, time
pid, port, stop = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def stats():
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"STATS\n"); line = s.makefile().readline(); s.close()
    return {k: int(v) for k, v in (kv.split("=") for kv in line.split())}
sent = {"sigusr1": 0, "sigusr2": 0, "sigrt": 0}
base = stats()
next_usr2 = time.time()
while not os.path.exists(stop):
    os.kill(pid, signal.SIGUSR1); sent["sigusr1"] += 1
    os.kill(pid, signal.SIGRTMIN); os.kill(pid, signal.SIGRTMIN); sent["sigrt"] += 2
    deadline = time.time() + 2  # then it was lost: go on
    while time.time() < deadline:
        now = time.time()
        if now >= next_usr2:
            os.kill(pid, signal.SIGUSR2); sent["sigusr2"] += 1
            next_usr2 = now + 0.002
        if stats()["sigusr1"] - base["sigusr1"] >= sent["sigusr1"]: break
        time.sleep(0.0002)
time.sleep(0.5)
s = stats()
print(*(sent[k] for k in sent), *(s[k] - base[k] for k in sent))
PY
}

run() {  # run NAME: the same cycles, on the signalled greeter (polus) or on a decoy (baseline)
  local name=$1
  rm -f "$work/stop"
  start_server
  local patched=$server decoy=""
  if [ "$name" = baseline ]; then
    # The same polusctl work on a second greeter: the machine is as busy as in the Polus
    # run (on 2 cores that alone delays the signal-taking thread), but nothing holds the
    # greeter that gets the signals.
    "$build/test-servers/greeter-v0" --port 0 --workers 4 >/dev/null 2>&1 &
    decoy=$!
    patched=$decoy
    sleep 0.3
  fi
  send_signals "$work/stop" >"$work/$name.counts" &
  local sender=$!
  local began=$SECONDS
  for i in $(seq "$cycles"); do
    if (( i % 2 )); then patch=$build/test-servers/patches/greeter-v0-v1.so; else patch=$build/test-servers/patches/greeter-v0-v1-data.so; fi
    $polusctl apply "$patched" "$patch" --sync-timeout 50 >/dev/null 2>&1 || echo "cycle $i: apply failed" >&2
    $polusctl rollback "$patched" --sync-timeout 2000 >/dev/null 2>&1 || echo "cycle $i: rollback failed" >&2
  done
  echo $((SECONDS - began)) >"$work/$name.duration"
  touch "$work/stop"
  wait "$sender"
  if ! kill -0 "$server" 2>/dev/null; then echo "the greeter died during the $name run" >&2; fi
  [ -n "$decoy" ] && kill "$decoy" 2>/dev/null && wait "$decoy" 2>/dev/null
  stop_server
}

echo "==> $cycles apply/rollback cycles with signals" >&2
run polus
echo "==> the same cycles on a decoy greeter (baseline)" >&2
run baseline
read -r p_u1 p_u2 p_rt p_g1 p_g2 p_grt <"$work/polus.counts"
read -r b_u1 b_u2 b_rt b_g1 b_g2 b_grt <"$work/baseline.counts"
echo "with Polus: SIGUSR1 $p_g1/$p_u1, SIGUSR2 $p_g2/$p_u2, SIGRTMIN $p_grt/$p_rt (received/sent)" >&2
echo "baseline:   SIGUSR1 $b_g1/$b_u1, SIGUSR2 $b_g2/$b_u2, SIGRTMIN $b_grt/$b_rt (received/sent)" >&2

source bench/reliability-section.sh
{
  cat <<EOF
## Signals sent while Polus works

Last run $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD), \`bench/signal-trials.sh ${cycles}\`: the greeter
(4 workers, one signal-taking thread) under a client loop; ${cycles} cycles of \`polusctl apply\` + \`rollback\`,
code and data patches alternately; meanwhile SIGUSR1/SIGUSR2 alternately, each sent once the previous
one was counted by the greeter's handler (paced: none may be lost), SIGUSR2 every 2 ms regardless
(unpaced: a pending standard signal absorbs the next one of its kind, so any delay in the
signal-taking thread loses some, with or without Polus), and two SIGRTMIN (queued) per SIGUSR1. The
baseline runs the same polusctl cycles on a second, decoy greeter, so the machine is as busy (on 2
cores that alone delays the signal-taking thread) while nothing holds the greeter that gets the
signals. Received / sent:

| run | SIGUSR1 (paced) | SIGUSR2 (unpaced, 2 ms) | SIGRTMIN |
|---|---|---|---|
| Polus patching the signalled greeter ($(cat "$work/polus.duration") s) | $p_g1 / $p_u1 | $p_g2 / $p_u2 | $p_grt / $p_rt |
| the same cycles on a decoy greeter ($(cat "$work/baseline.duration") s) | $b_g1 / $b_u1 | $b_g2 / $b_u2 | $b_grt / $b_rt |
EOF
} >"$work/section.md"
write_reliability_section signal-trials bench/signal-trials.sh "$work/section.md"
echo "==> wrote RELIABILITY.md"
