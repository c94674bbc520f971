#!/usr/bin/env bash
# The main job in one command: starts a local Milvus on 127.0.0.1 (installing it from PyPI the
# first time), builds Stampede, runs examples/quickstart.yaml (prepare → three load stages →
# analysis → reports) and stops Milvus again. Extra arguments go to `stampede run`.
# Exit code: 0 when the SLA passes, 1 when it fails, 2 on error.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

started_here=0
if ! scripts/milvus.sh status >/dev/null 2>&1; then
  scripts/milvus.sh start
  started_here=1
fi
stop_milvus() { if [ "$started_here" = 1 ]; then scripts/milvus.sh stop; fi; }
trap stop_milvus EXIT

echo "building stampede (release)…" >&2
cargo build --release --quiet
target/release/stampede run -f examples/quickstart.yaml -o stampede-results/quickstart "$@"
