#!/usr/bin/env bash
# Install what lint and tests need from Debian when running as root: nginx and
# tinyproxy (real peers for the download tests), nix-bin, Clang and g++ (the C++
# reference builds), the Vulkan loader and Mesa's drivers (the WebGPU probe's tests);
# then this package with its dev extras and its `hf` extra (transformers and torch, the
# crossval ground truth). torch is installed first, by version: on these machines
# `torch==2.13.0` resolves to the CPU wheel on the local disk, while an unpinned `torch`
# from the `hf` extra would pull a multi-GB CUDA build from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v tinyproxy >/dev/null 2>&1 || [ -x /usr/bin/tinyproxy ] || need+=(tinyproxy)
# Nix 2.8 for checking our NAR hashes against `nix hash path`.
command -v nix >/dev/null 2>&1 || need+=(nix-bin)
# Clang (and a C/C++ toolchain) for the real llama.cpp and bitnet.cpp builds.
command -v clang >/dev/null 2>&1 || need+=(clang)
command -v g++ >/dev/null 2>&1 || need+=(g++)
# The real Vulkan loader and Mesa's drivers (lavapipe) for the WebGPU probe's tests.
ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1 ' || need+=(libvulkan1)
[ -e /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ] || [ "$(uname -m)" != x86_64 ] \
  || need+=(mesa-vulkan-drivers)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "deps: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "deps: missing ${need[*]} (not root or no apt-get): tests that need them will be skipped" >&2
  fi
fi
TORCH_VERSION="${XTASK_TORCH_VERSION:-2.13.0}"
python3 -c "import torch" 2>/dev/null \
  || python3 -m pip install -q --disable-pip-version-check "torch==${TORCH_VERSION}"
python3 -m pip install -q --disable-pip-version-check -e '.[dev,hf]'
