#!/usr/bin/env bash
# Rebuilds the valid seeds of the patch reader's fuzz corpus (injector/tests/fuzz/corpus/)
# from the test patches, in the link variants a patch can come in: GNU and SysV hash tables,
# -z now, a version script with a soname, lld's layout, C++, thread-local data. Stripped, so
# each stays small, named *.elf (the repository ignores *.so). crash-* files in the corpus (inputs that once broke the reader or the
# loader) are left as they are.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
out="$here/corpus"
patches="$root/test-servers/patches"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cflags=(-O2 -fPIC -shared -I "$root/patch-format/include" -Wl,-z,defs)

build() {  # build NAME COMPILER SOURCE [extra flags...]
  local name=$1 cc=$2 src=$3
  shift 3
  "$cc" "${cflags[@]}" "$@" "$src" -o "$tmp/$name"
  strip --strip-all -R .comment "$tmp/$name" -o "$out/${name%.so}.elf"
}

mkdir -p "$out"
for p in greeter-v0-v1 greeter-v1-v2 greeter-v0-v1-data counter-v0-v1 inventory-v0-v1; do
  build "$p.so" gcc "$patches/$p.c"
done
build greeter-v0-v1-cxx.so g++ "$patches/greeter-v0-v1-cxx.cc" -fno-exceptions -fno-rtti
build greeter-v0-v1-hash-both.so gcc "$patches/greeter-v0-v1.c" -Wl,--hash-style=both
build greeter-v0-v1-hash-sysv.so gcc "$patches/greeter-v0-v1.c" -Wl,--hash-style=sysv
build greeter-v0-v1-now.so gcc "$patches/greeter-v0-v1.c" -Wl,-z,now
printf 'GREETER_1 { global: polus_patch_descriptor; format_reply_v1; local: *; };\n' >"$tmp/version.map"
build greeter-v0-v1-verdef.so gcc "$patches/greeter-v0-v1.c" -Wl,--version-script="$tmp/version.map" -Wl,-soname,libgreeter-v1.so
if command -v clang >/dev/null && command -v ld.lld >/dev/null; then
  build greeter-v0-v1-lld.so clang "$patches/greeter-v0-v1.c" -fuse-ld=lld
fi
build greeter-tls.so gcc "$here/seeds/greeter-tls.c"
ls -l "$out"
