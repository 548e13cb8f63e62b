#!/usr/bin/env bash
# Sets up (Debian packages, build) and runs every test: ctest drives real target processes
# through real ptrace. Needs root or CAP_SYS_PTRACE (or ptrace_scope 0 for own processes).
set -euo pipefail
cd "$(dirname "$0")/.."
./tools/setup-debian.sh
ctest --test-dir build --output-on-failure -j2 --timeout 300
