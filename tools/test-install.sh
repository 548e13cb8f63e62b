#!/usr/bin/env bash
# Installs Polus the two ways the README shows and uses it from there, as an operator would:
#   1. `cmake --install` into a temporary prefix: every file in its place; a patch built with
#      the installed header through pkg-config; the installed polusctl applies it to a greeter
#      without --agent (and without $POLUS_AGENT): it finds the installed agent itself.
#   2. `cpack -G DEB`: the package's contents and dependencies; then `dpkg -i` of it into a
#      copy-on-write view of this machine's root (an overlay in a private mount namespace, so
#      the machine itself is untouched), `systemd-analyze verify` of the installed units, and
#      the packaged polusctl applying a patch from inside that root.
# usage: tools/test-install.sh BUILD_DIR   (needs root: mount namespaces, ptrace)
set -euo pipefail
build=$(cd "${1:?usage: test-install.sh BUILD_DIR}" && pwd)
src=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/polus-install.XXXXXX)
greeter_pid=""
cleanup() {
  [ -n "$greeter_pid" ] && kill "$greeter_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
unset POLUS_AGENT POLUS_SOCKET
export POLUS_NO_DAEMON=1

# A greeter listening on a free port; prints its pid and port. $1: where its stdout goes.
start_greeter() {
  "$build/test-servers/greeter-v0" --workers 2 >"$1" 2>/dev/null &
  greeter_pid=$!
  for _ in $(seq 100); do grep -q '^PORT ' "$1" && break; sleep 0.05; done
  greeter_port=$(awk '/^PORT /{print $2}' "$1")
  [ -n "$greeter_port" ] || fail "greeter did not start"
}
hello() {
  exec 3<>"/dev/tcp/127.0.0.1/$greeter_port"
  printf 'HELLO op\n' >&3
  read -r reply <&3
  exec 3>&-
  echo "$reply"
}

echo "== cmake --install into $work/prefix"
cmake --install "$build" --prefix "$work/prefix" >/dev/null
for f in sbin/polusctl sbin/polusd lib/polus/libpolus-agent.so lib/polus/libpolusctl-engine.so include/polus/patch.h \
         share/pkgconfig/polus-patch.pc share/man/man8/polusctl.8 share/man/man8/polusd.8 \
         share/man/man5/polus-patch.5 lib/systemd/system/polusd.service lib/systemd/system/polusd.socket \
         share/bash-completion/completions/polusctl; do
  [ -e "$work/prefix/$f" ] || fail "cmake --install did not install $f"
done
grep -q "^ExecStart=$work/prefix/sbin/polusd " "$work/prefix/lib/systemd/system/polusd.service" ||
  fail "polusd.service does not start the installed polusd"
"$work/prefix/sbin/polusctl" --version | grep -q "^polusctl (Polus) " || fail "polusctl --version"
if command -v groff >/dev/null; then
  for page in man8/polusctl.8 man8/polusd.8 man5/polus-patch.5; do
    groff -man -Tutf8 -ww -z "$work/prefix/share/man/$page" 2>"$work/groff.err" || fail "groff $page"
    [ ! -s "$work/groff.err" ] || fail "groff warns on $page: $(cat "$work/groff.err")"
  done
fi
bash -n "$work/prefix/share/bash-completion/completions/polusctl" || fail "bash completion does not parse"
cflags=$(PKG_CONFIG_PATH="$work/prefix/share/pkgconfig" pkg-config --cflags polus-patch)
gcc -O2 -shared $cflags "$src/test-servers/patches/greeter-v0-v1.c" -o "$work/greeter-v1.so"
start_greeter "$work/greeter.out"
[ "$(hello)" = "Hello, op! (v0)" ] || fail "greeter v0"
"$work/prefix/sbin/polusctl" apply "$greeter_pid" "$work/greeter-v1.so" >/dev/null || fail "installed polusctl apply"
[ "$(hello)" = "Hi there, op! (v1)" ] || fail "the patch built with the installed header did not take"
# The agent comes from a sealed memfd holding the installed file's bytes (never loaded by path).
agent_range=$(awk '$6 == "/memfd:libpolus-agent.so" && $3 == "00000000" { print $1; exit }' "/proc/$greeter_pid/maps")
[ -n "$agent_range" ] || fail "no agent memfd in the greeter's maps"
cmp -s "$work/prefix/lib/polus/libpolus-agent.so" "/proc/$greeter_pid/map_files/$agent_range" || fail "not the installed agent"
"$work/prefix/sbin/polusctl" rollback "$greeter_pid" >/dev/null || fail "installed polusctl rollback"
kill "$greeter_pid"; wait "$greeter_pid" 2>/dev/null || true; greeter_pid=""
echo "ok: installed files, a patch built against them, applied without --agent"

echo "== cpack -G DEB"
(cd "$build" && cpack -G DEB -B "$work/deb" >/dev/null) || fail "cpack -G DEB"
deb=$(ls "$work"/deb/polus_*_amd64.deb)
contents=$(dpkg-deb -c "$deb")
for f in ./usr/sbin/polusctl ./usr/sbin/polusd ./usr/lib/polus/libpolus-agent.so ./usr/lib/polus/libpolusctl-engine.so \
         ./usr/include/polus/patch.h \
         ./usr/lib/systemd/system/polusd.service ./usr/lib/systemd/system/polusd.socket \
         ./usr/share/man/man8/polusctl.8 ./usr/share/bash-completion/completions/polusctl; do
  grep -q " $f\$" <<<"$contents" || fail "the package lacks $f"
done
dpkg-deb -f "$deb" Depends | grep -q libspdlog || fail "the package's Depends lacks the libraries (shlibdeps)"
echo "ok: $(basename "$deb"): $(grep -c . <<<"$contents") entries"

echo "== dpkg -i into an overlay of / (private mount namespace), then apply from there"
mkdir -p "$work/root"
# The greeter runs inside that root too; the agent it gets (from a memfd) holds the packaged
# file's bytes.
inside=$(cat <<INSIDE
set -e
mount -t tmpfs tmpfs "$work/ov"
mkdir "$work/ov/upper" "$work/ov/work"
mount -t overlay overlay -o "lowerdir=/,upperdir=$work/ov/upper,workdir=$work/ov/work" "$work/root"
mount -t proc proc "$work/root/proc"
mount -t tmpfs tmpfs "$work/root/run"  # the package's scripts must not reach this machine's services
mount --rbind /dev "$work/root/dev"
chroot "$work/root" /bin/bash -e -c '
  export POLUS_NO_DAEMON=1
  "$build/test-servers/greeter-v0" --workers 2 >/tmp/greeter.out 2>/dev/null &
  greeter_pid=\$!
  for _ in \$(seq 100); do grep -q "^PORT " /tmp/greeter.out && break; sleep 0.05; done
  port=\$(awk "/^PORT /{print \\\$2}" /tmp/greeter.out)
  hello() { exec 3<>/dev/tcp/127.0.0.1/\$port; printf "HELLO op\\n" >&3; read -r reply <&3; exec 3>&-; echo "\$reply"; }
  dpkg -i "$deb" >/dev/null
  test ! -e /usr/local/lib/polus/libpolus-agent.so || echo "note: /usr/local has an agent too"
  if command -v systemd-analyze >/dev/null; then
    # Any complaint (a setting it cannot parse is only a warning) fails the test.
    complaints=\$(systemd-analyze verify /usr/lib/systemd/system/polusd.socket /usr/lib/systemd/system/polusd.service 2>&1)
    test -z "\$complaints" || { echo "systemd-analyze verify: \$complaints" >&2; exit 1; }
  fi
  /usr/sbin/polusctl apply \$greeter_pid "$build/test-servers/patches/greeter-v0-v1.so" >/dev/null
  agent_range=\$(awk "\\\$6 == \"/memfd:libpolus-agent.so\" && \\\$3 == \"00000000\" { print \\\$1; exit }" /proc/\$greeter_pid/maps)
  cmp -s /usr/lib/polus/libpolus-agent.so /proc/\$greeter_pid/map_files/\$agent_range
  test "\$(hello)" = "Hi there, op! (v1)"
  kill \$greeter_pid
  man -w polusctl >/dev/null 2>&1 || test -e /usr/share/man/man8/polusctl.8
  dpkg -r polus >/dev/null
  test ! -e /usr/sbin/polusctl
'
INSIDE
)
mkdir -p "$work/ov"
unshare --mount --propagation private bash -c "$inside" || fail "dpkg -i / verify / apply inside the overlay root"
[ ! -e /usr/sbin/polusctl ] || echo "note: this machine has its own /usr/sbin/polusctl (not from this test)"
echo "ok: dpkg -i, systemd-analyze verify, apply with the packaged polusctl, dpkg -r"
