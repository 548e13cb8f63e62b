#!/usr/bin/env bash
# The main job, end to end: start the greeter server (v0), ask it something, patch it live
# to v1 with polusctl, ask again, roll back, ask again. The server never restarts.
set -euo pipefail
cd "$(dirname "$0")/.."
./tools/setup-debian.sh >/dev/null

build=build
server="$build/test-servers/greeter-v0"
patch="$build/test-servers/patches/greeter-v0-v1.so"
polusctl="$build/tools/polusctl"

out=$(mktemp)
"$server" --port 0 --workers 4 >"$out" &
pid=$!
trap 'kill $pid 2>/dev/null; rm -f "$out"' EXIT
for _ in $(seq 50); do grep -q '^PORT ' "$out" && break; sleep 0.1; done
port=$(awk '/^PORT /{print $2}' "$out")

ask() { # one request over a fresh connection, with bash's /dev/tcp
  exec 3<>"/dev/tcp/127.0.0.1/$port"
  printf 'HELLO operator\n' >&3
  IFS= read -r reply <&3
  exec 3<&-
  echo "    server $pid says: $reply"
}

echo "==> greeter v0 running as pid $pid on port $port"
ask
echo "==> polusctl apply $pid $(basename "$patch")"
"$polusctl" apply "$pid" "$patch"
ask
echo "==> polusctl status $pid"
"$polusctl" status "$pid"
echo "==> polusctl rollback $pid"
"$polusctl" rollback "$pid"
ask
echo "==> the same process ($pid) served all of it: $(ls /proc/$pid/task | wc -l) threads, never restarted"
