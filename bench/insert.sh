#!/usr/bin/env bash
# Insert throughput: `stampede prepare` vs the pymilvus script, same server, same rows, back to back.
#   bench/insert.sh [ROWS] [DIM]      (defaults 100000 768; needs a release build and a running
#                                      local Milvus: scripts/milvus.sh start)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rows=${1:-100000}
dim=${2:-768}
out=bench/out
mkdir -p "$out"
cargo build --release --quiet
cat > "$out/insert-bench.yaml" <<YAML
apiVersion: stampede.dev/v1alpha1
kind: StressTest
metadata: {name: insert-bench}
spec:
  target: {address: "127.0.0.1:19530"}
  collection: {name: bench_stampede_insert, dimension: $dim, onExisting: Recreate}
  data:
    rows: $rows
    batchSize: 10000
    insertConcurrency: ${INSERT_CONCURRENCY:-2}
    vectors: {distribution: Normal, normalize: true}
    scalars: [{name: category, values: [A, B, C, D]}]
  index: {type: FLAT}
  recall: {sampleQueries: 0}
  stages: [{duration: 1s, users: 1, spawnRate: 1}]
YAML
echo "== pymilvus ($rows x $dim)"
.venv/bin/python bench/pymilvus_insert.py --rows "$rows" --dim "$dim" | tee "$out/pymilvus.json"
echo "== stampede prepare ($rows x $dim)"
target/release/stampede prepare -f "$out/insert-bench.yaml" -o "$out/stampede" --quiet
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
py = json.load(open(f"{out}/pymilvus.json"))
st = json.load(open(f"{out}/stampede/prepare.json"))
s = st["insertRowsPerSecond"]
print(f"pymilvus: {py['rows_per_second']:.0f} rows/s   stampede: {s:.0f} rows/s   ratio: {s / py['rows_per_second']:.2f}x")
PY
.venv/bin/python -c "from pymilvus import connections, utility; connections.connect(host='127.0.0.1', port='19530'); utility.drop_collection('bench_stampede_insert')"
