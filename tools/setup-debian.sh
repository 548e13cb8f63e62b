#!/usr/bin/env bash
# Installs what Polus needs to build and test on Debian 12 (bookworm), then configures and
# builds it into ./build. Safe to run again: packages already present are not reinstalled.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential cmake pkg-config binutils libelf-dev libdwarf-dev libcapstone-dev libspdlog-dev catch2 libssl-dev
          libcli11-dev nlohmann-json3-dev)
# libsodium: Ed25519 signatures of patches (injector/src/update/patch_signature.cc).
packages+=(libsodium-dev)
# polus-mkpatch (the patch generator, Python 3): ELF/DWARF reading and instruction lengths.
packages+=(python3 python3-pyelftools python3-capstone patch)
# Real servers as Debian ships them, patched by the tests (stale_frames_test: nginx in daemon
# mode, whose master keeps a stale fork return address on its stack).
packages+=(nginx)
packages+=("$@")  # extra packages a caller needs (bench adds gnuplot-nox)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "==> installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The tests run nginx with a configuration and port of their own; the service the package
  # starts is not needed.
  if [[ " ${missing[*]} " == *" nginx "* ]] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    $sudo systemctl disable --now nginx >/dev/null 2>&1 || true
  fi
fi

werror=OFF
[ "${CI:-}" = "true" ] && werror=ON
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPOLUS_WERROR="$werror" >/dev/null
cmake --build build -j"$(nproc)"
