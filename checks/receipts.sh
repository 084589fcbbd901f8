#!/usr/bin/env bash
# gen-fixtures -> crossval against the pinned llama.cpp (and the NumPy reference); the
# receipt and the commands' JSON events land in reports/receipts/.
# Where the llama.cpp comes from: with XTASK_CPP_PREFIX_LLAMA_CPP set (what `nix flake
# check` does: checks.receipts points it at packages.llama-cpp), crossval uses that
# build and nothing is built; without it, `xtask fetch-cpp` builds it in the cache
# (once: a second run finds the receipt and does nothing).
set -euo pipefail
cd "$(dirname "$0")/.."

out=reports/receipts
rm -rf "$out"
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
xtask() { python3 -m bitnet_xtask "$@"; }

xtask gen-fixtures --size tiny --arch llama --quant f32 --output "$work/fixtures" --json \
  >"$out/gen-fixtures.jsonl"
if [ -z "${XTASK_CPP_PREFIX_LLAMA_CPP:-}" ]; then
  xtask fetch-cpp --ref llama.cpp --json >"$out/fetch-cpp.jsonl"
fi
models=()
for model in "$work"/fixtures/*.gguf; do models+=(--model "$model"); done
[ "${#models[@]}" -gt 0 ] || { echo "receipts: gen-fixtures wrote no .gguf" >&2; exit 1; }
xtask crossval "${models[@]}" --backend cpp:llama.cpp --backend numpy \
  --receipt "$out/crossval.json" --json >"$out/crossval.jsonl"
echo "receipts: ok ($out/crossval.json)"
