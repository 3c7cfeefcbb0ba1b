#!/usr/bin/env bash
# Regenerates the Python stubs from protos/ (byte-identical on rerun).
# With --check, regenerates into a scratch copy and fails if the committed stubs differ.
set -euo pipefail
cd "$(dirname "$0")/.."
out=clients/python
if [[ "${1:-}" == "--check" ]]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi
mkdir -p "$out/certbroker/v1"
.venv/bin/python -m grpc_tools.protoc -Iprotos \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  protos/certbroker/v1/*.proto
touch "$out/certbroker/v1/__init__.py"
if [[ "${1:-}" == "--check" ]]; then
  if ! diff -r -x __pycache__ -x py.typed "$out/certbroker/v1" clients/python/certbroker/v1; then
    echo "generated stubs differ from protos/: run scripts/gen_protos.sh and commit" >&2
    exit 1
  fi
  echo "generated stubs match protos/"
fi
