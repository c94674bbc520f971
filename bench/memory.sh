#!/usr/bin/env bash
# Memory: maximum resident set size of `stampede run` with 500 users (closed model, one stage of
# 500 users started at 100/s, 40 s, wait 100–500 ms between a user's requests as in the classic
# scenario) on the quickstart collection. Goal: under 100 MB.
#
#   bench/memory.sh [USERS] [SECONDS]        (defaults 500 40)
#
# Max RSS comes from `/usr/bin/time -v` ("Maximum resident set size"); VmRSS is also sampled every
# second to show whether memory keeps growing. Needs a running local Milvus (scripts/milvus.sh
# start) and /usr/bin/time (apt-get install time).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
users=${1:-500}
secs=${2:-40}
out=bench/out/memory
mkdir -p "$out"
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 2; }
cargo build --release --quiet

cat > "$out/memory.yaml" <<YAML
apiVersion: stampede.dev/v1alpha1
kind: StressTest
metadata: {name: memory}
spec:
  target: {address: 127.0.0.1:19530}
  collection: {name: stampede_quickstart, dimension: 64, metric: L2, onExisting: Reuse}
  data:
    rows: 5000
    batchSize: 2500
    seed: 42
    vectors: {distribution: Clustered, normalize: true, clusters: 50, spread: 0.2}
    scalars:
      - {name: category, values: [A, B, C, D]}
  index: {type: HNSW, params: {M: 16, efConstruction: 100}}
  workload:
    model: Closed
    consistency: Bounded
    waitTime: {min: 100ms, max: 500ms}
    operations:
      - {name: search_vector, weight: 10, search: {topK: 10, params: {ef: 64}}}
      - {name: search_with_filter, weight: 3, search: {topK: 10, params: {ef: 64}, filter: 'category == "{category}"'}}
      - {name: batch_search, weight: 1, search: {topK: 10, nq: 5, params: {ef: 64}}}
  stages:
    - {duration: ${secs}s, users: $users, spawnRate: 100}
  recall: {sampleQueries: 100, topK: 10, share: 0.2}
YAML

/usr/bin/time -v -o "$out/time.txt" \
  target/release/stampede run -f "$out/memory.yaml" -o "$out/result" --quiet >"$out/run.txt" &
timer=$!
# VmRSS of the stampede process (the child of time) once a second.
: >"$out/rss.txt"
pid=""
for _ in $(seq 1 50); do
  pid=$(pgrep -P "$timer" || true)
  [ -n "$pid" ] && break
  sleep 0.1
done
t=0
while [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; do
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
  [ -n "$rss" ] && echo "$t $rss" >>"$out/rss.txt"
  sleep 1
  t=$((t + 1))
done
status=0
wait "$timer" || status=$?

python3 - "$out" "$users" "$status" <<'PY'
import json, sys
out, users, status = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
time_v = dict(
    line.strip().rsplit(": ", 1) for line in open(f"{out}/time.txt") if ": " in line
)
max_rss_mb = int(time_v["Maximum resident set size (kbytes)"]) / 1024
cpu = float(time_v["User time (seconds)"]) + float(time_v["System time (seconds)"])
r = json.load(open(f"{out}/result/result.json"))
st = r["stages"][0]
samples = [tuple(map(int, l.split())) for l in open(f"{out}/rss.txt") if l.strip()]
print(f"stampede run: {users} users (closed, wait 100-500 ms), exit status {status}")
print(f"  steady state: {st['requests']} requests, {st['qps']:.0f} req/s, in flight mean "
      f"{st['inFlightMean']:.0f} (max {st['inFlightMax']}), P95 {st['p95Ms']:.1f} ms, "
      f"failures {st['failures']}, valid {st['valid']}")
print(f"  CPU {cpu:.2f} s, wall {time_v['Elapsed (wall clock) time (h:mm:ss or m:ss)']}")
if samples:
    tail = [kb for _, kb in samples[len(samples) // 2:]]
    print(f"  VmRSS samples: first {samples[0][1] / 1024:.1f} MB, max {max(kb for _, kb in samples) / 1024:.1f} MB, "
          f"second half {min(tail) / 1024:.1f}-{max(tail) / 1024:.1f} MB ({len(samples)} samples)")
print(f"  maximum resident set size: {max_rss_mb:.1f} MB (goal: < 100 MB: {'met' if max_rss_mb < 100 else 'NOT met'})")
PY
