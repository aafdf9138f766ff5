#!/usr/bin/env bash
# Generate the Python stubs (+ .pyi type stubs) for protos/semsearch/v1/*.proto into the one
# importable package semsearch.v1. Usage: scripts/gen-protos.sh [OUT_DIR] (default: repo root).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root}"
py="${PYTHON:-$root/.venv/bin/python}"
mkdir -p "$out/semsearch/v1"
"$py" -m grpc_tools.protoc -I "$root/protos" \
  --python_out="$out" --grpc_python_out="$out" --pyi_out="$out" \
  "$root"/protos/semsearch/v1/*.proto
