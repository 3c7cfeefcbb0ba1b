#!/usr/bin/env bash
# buf breaking against main: a change to the released contract must be deliberate.
# On main itself (CI's clean checkout) this compares main with itself and passes.
set -euo pipefail
cd "$(dirname "$0")/.."
# (No `grep -q` on a pipe: it closes the pipe early and pipefail turned that into "no protos".)
if git rev-parse --verify -q main >/dev/null && [ -n "$(git ls-tree -r --name-only main -- protos/)" ]; then
  node_modules/.bin/buf breaking --against '.git#branch=main'
  echo "buf breaking: no breaking change against main"
else
  echo "buf breaking: main has no protos yet; nothing to compare"
fi
