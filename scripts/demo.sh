#!/usr/bin/env bash
# The main job on an embedded default, with no network and no GPU: serve a generated
# 32 MiB "model" from the project's loopback Hugging Face-compatible server, download
# it with `xtask download-model` (redirect, linked sha256, parallel streams), then run
# again to show the cache check. Everything lives in a temp dir removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."

work="$(mktemp -d)"
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/hub/demo/tiny-model"
python3 -c 'import random, sys; sys.stdout.buffer.write(random.Random(0).randbytes(32 << 20))' \
  > "$work/hub/demo/tiny-model/model.gguf"
python3 testing/servers/hf_server.py --root "$work/hub" > "$work/server.json" &
server_pid=$!
for _ in $(seq 100); do [ -s "$work/server.json" ] && break; sleep 0.1; done
hub="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["hub"])' "$work/server.json")"

run() { xtask download-model --base-url "$hub" --id demo/tiny-model --file model.gguf \
  --out "$work/models" --connections 4 "$@"; }
echo "== plan";           run --dry-run
echo "== download";       run --no-progress
echo "== again (cached)"; run --no-progress
ls -l "$work/models/demo-tiny-model"
