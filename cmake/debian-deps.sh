#!/usr/bin/env bash
# Installs the Debian packages Longhaul needs when any is missing (as root), or says which are
# missing (as another user). Sourced or run by examples/demo.sh and tests/run.sh.
#   Required: a C/C++ toolchain, CMake, Open MPI, zstd, GoogleTest, pkg-config.
#   Optional, installed too: hwloc (topology), iproute2 (the namespace testbed), gnuplot, and
#   fortunes (the default corpus of examples/train_gpt).
#   CUDA, NCCL and cuBLAS come from /usr/local/cuda when present; the build works without.
set -euo pipefail

lh_packages=(cmake make g++ gcc pkg-config openmpi-bin libopenmpi-dev libzstd-dev libgtest-dev
             libhwloc-dev hwloc iproute2 libopenblas-dev gnuplot-nox fortunes)

lh_missing_packages() {
  local p missing=()
  for p in "${lh_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  echo "${missing[@]:-}"
}

lh_install_deps() {
  local missing
  missing=$(lh_missing_packages)
  [ -z "$missing" ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "longhaul: missing Debian packages: $missing" >&2
    echo "longhaul: install them with: sudo apt-get install -y $missing" >&2
    return 1
  fi
  echo "longhaul: installing $missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  lh_install_deps
fi
