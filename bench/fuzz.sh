#!/usr/bin/env bash
# Fuzzes the patch reader (read_patch_bytes, injector/src/update/patch_file.cc) and writes the
# figures into the "Patch reader fuzzing" section of RELIABILITY.md.
#
#   bench/fuzz.sh [SECONDS]        (default 600)
#
# Builds injector/tests/fuzz/patch_reader_fuzz with clang, libFuzzer, ASan and UBSan in its own
# build directory ($POLUS_FUZZ_BUILD, default build/fuzz), then, starting from the committed
# corpus (injector/tests/fuzz/corpus/):
#   1. 80 % of the time: the reader alone. Any result but success or kPatchMalformed, any
#      crash, hang or sanitizer report is a finding (libFuzzer saves it as crash-*).
#   2. 20 % of the time: the same, and every input the reader accepts is also dlopen'd by the
#      real loader in a forked child. A child the loader kills is a finding (loader-*.so): the
#      reader let through something ld.so cannot take. A child killed in the patch's own code,
#      or looping in it, is counted apart: damaged machine code, which no reader can judge.
# Findings are copied into the corpus as crash-* files (patch_file_test replays them and
# requires them refused). One fuzzing process at a time: the machine has 2 shared cores.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-600}
build=${POLUS_FUZZ_BUILD:-build/fuzz}
seeds=injector/tests/fuzz/corpus
work=$build/fuzz-work
rm -rf "$work"
mkdir -p "$work/corpus" "$work/artifacts" "$work/loader" "$work/logs"

command -v clang++ >/dev/null || { echo "fuzz.sh: clang++ is needed (apt-get install clang libclang-rt-dev)" >&2; exit 2; }
echo "==> building the fuzz target in $build"
cmake -S . -B "$build" -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DPOLUS_FUZZ=ON \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" --target patch_reader_fuzz -j2 >/dev/null
fuzzer=$build/injector/tests/fuzz/patch_reader_fuzz
cp "$seeds"/* "$work/corpus/"
seed_count=$(ls "$seeds" | wc -l)

executions=0
runs=0
# fuzz SECONDS LOG [extra env...]: runs libFuzzer until SECONDS have passed, restarting it
# after a finding (libFuzzer stops at the first one).
fuzz() {
  local budget=$1 tag=$2
  shift 2
  local until=$((SECONDS + budget))
  while ((SECONDS < until)); do
    runs=$((runs + 1))
    local log="$work/logs/$tag-$runs.log"
    env "$@" "$fuzzer" -max_total_time=$((until - SECONDS)) -max_len=32768 -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="$work/artifacts/" "$work/corpus" >"$log" 2>&1 || true
    local n
    n=$(grep 'stat::number_of_executed_units' "$log" | tail -1 | awk '{print $2}')
    executions=$((executions + ${n:-0}))
    if grep -q 'Test unit written to' "$log"; then
      echo "    finding: $(grep 'Test unit written to' "$log" | tail -1 | sed 's/.*written to //')"
      ((SECONDS < until)) || break
    else
      break
    fi
  done
}

reader_seconds=$((seconds * 8 / 10))
loader_seconds=$((seconds - reader_seconds))
echo "==> phase 1: the reader alone, ${reader_seconds} s"
fuzz "$reader_seconds" reader
reader_executions=$executions
echo "==> phase 2: the reader and the loader, ${loader_seconds} s"
fuzz "$loader_seconds" loader POLUS_FUZZ_LOAD="$work/loader" ASAN_OPTIONS=allow_user_segv_handler=1
loader_executions=$((executions - reader_executions))

crashes=$(find "$work/artifacts" -type f | wc -l)
loader_kills=$(find "$work/loader" -name 'loader-*' | wc -l)
patch_code=$(cat "$work"/logs/loader-*.log | grep -c "the patch's own code faulted" || true)
hangs=$(cat "$work"/logs/loader-*.log | grep -c "loading hung" || true)
accepted_loads=$(cat "$work"/logs/loader-*.log | grep -c "polus-fuzz:" || true)
corpus_size=$(ls "$work/corpus" | wc -l)
rate=$((executions / (seconds > 0 ? seconds : 1)))

for f in "$work"/artifacts/*; do
  [ -e "$f" ] || continue
  cp "$f" "$seeds/crash-$(sha1sum "$f" | cut -c1-16)"
done
for f in "$work"/loader/loader-*; do
  [ -e "$f" ] || continue
  cp "$f" "$seeds/crash-loader-$(sha1sum "$f" | cut -c1-16)"
done

# ---- RELIABILITY.md: this script's section only. ------------------------------------
source "$(dirname "$0")/reliability-section.sh"
cat >"$work/section.md" <<EOF
## Patch reader fuzzing

Last run $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), ${seconds} s on this
project's 2-core machine, one fuzzing process: \`bench/fuzz.sh ${seconds}\` (clang $(clang++ --version | head -1 | grep -o '[0-9][0-9.]*' | head -1),
libFuzzer, ASan, UBSan) on \`read_patch_bytes\`, starting from the ${seed_count} files of
\`injector/tests/fuzz/corpus/\`. The oracle: every input is accepted or refused with
\`kPatchMalformed\`; in the last ${loader_seconds} s every accepted input is also \`dlopen\`ed by
the real loader in a child process, which must not die inside the loader.

| figure | value |
|---|---|
| executions | ${executions} (${rate}/s) |
| of which with the loader check | ${loader_executions} |
| reader findings (crash, sanitizer report, timeout, other exception) | ${crashes} |
| accepted inputs that killed the loader | ${loader_kills} |
| accepted inputs whose own machine code faulted / looped when loaded (no reader can judge code) | ${patch_code} / ${hangs} |
| corpus | ${seed_count} committed files, ${corpus_size} after the run |

Findings are added to the corpus as \`crash-*\`; \`patch_file_test\` replays the corpus on
every test run and requires each of them refused.
EOF
write_reliability_section patch-reader-fuzzing bench/fuzz.sh "$work/section.md"

echo "==> ${executions} executions, ${crashes} reader findings, ${loader_kills} loader kills," \
  "${patch_code} patch-code faults, ${hangs} hangs, corpus ${seed_count} -> ${corpus_size}; wrote RELIABILITY.md"
