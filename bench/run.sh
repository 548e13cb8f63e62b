#!/usr/bin/env bash
# bench/run.sh [--quick] — Polus's benchmarks in one command (see bench/README.md).
#
# On a fresh Debian 12: installs what is missing (the build dependencies, gnuplot-nox, gdb)
# and builds the project into ./build (tools/setup-debian.sh), then runs every benchmark,
# prints one table on stdout and writes BENCHMARKS.md and bench/benchmarks.png.
# Progress and build output go to stderr. A full run takes a few minutes on 2 cores;
# --quick is a ~1-minute smoke run with few repetitions.
#
# Needs root (or CAP_SYS_PTRACE): polusctl and gdb attach to the benchmark's target processes.
set -euo pipefail
cd "$(dirname "$0")/.."

args=()
for arg in "$@"; do
  case "$arg" in
    --quick) args+=(--quick) ;;
    -h | --help)
      sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "usage: bench/run.sh [--quick]" >&2
      exit 2
      ;;
  esac
done

if [ "$(id -u)" -ne 0 ]; then
  echo "bench/run.sh: not root: polusctl and gdb need CAP_SYS_PTRACE to attach to the targets" >&2
fi

# Packages and the normal build (which includes the bench targets, built with -Werror).
if ! tools/setup-debian.sh gnuplot-nox gdb >&2; then
  # The rest of the tree may be mid-change; the benchmarks need only their own targets.
  echo "bench/run.sh: the full build failed; building only what the benchmarks need" >&2
  cmake --build build -j"$(nproc)" --target polus-bench >&2
fi

exec build/bench/polus-bench "${args[@]}" --markdown BENCHMARKS.md --png bench/benchmarks.png
