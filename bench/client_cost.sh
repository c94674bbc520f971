#!/usr/bin/env bash
# Client cost: CPU per request of `stampede run` vs Locust + pymilvus (bench/locustfile.py), same
# scenario (examples/quickstart.yaml's weighted searches), same offered load, same collection.
#
#   bench/client_cost.sh [RATE] [SECONDS] [LOCUST_USERS]     (defaults 100 30 20)
#
# Stampede runs the Open model at RATE requests/s; Locust runs LOCUST_USERS users with
# constant_throughput(RATE / LOCUST_USERS) and gevent-aware gRPC (GRPC_GEVENT=1, its best setting;
# LOCUST_GEVENT=0 runs plain grpcio instead). Each generator is also run at 1 request/s for the
# same time (its fixed cost: start-up, imports, connect, prepare check, reports, idle timers), so
# the marginal CPU per request = (CPU at RATE - CPU at 1/s) / (requests at RATE - requests at 1/s).
# CPU = user + system seconds of the whole process from /usr/bin/time. Needs a running local
# Milvus (scripts/milvus.sh start) and locust in .venv (.venv/bin/pip install locust).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rate=${1:-100}
secs=${2:-30}
users=${3:-20}
gevent=${LOCUST_GEVENT:-1}
out=bench/out/client_cost
mkdir -p "$out"
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 2; }
[ -x .venv/bin/locust ] || { echo "needs locust: .venv/bin/pip install locust" >&2; exit 2; }
cargo build --release --quiet
# The collection of examples/quickstart.yaml (reused when already there).
target/release/stampede prepare -f examples/quickstart.yaml -o "$out/prepare" --quiet >/dev/null

# examples/quickstart.yaml with the Open model and one stage at the given rate: the same
# collection, data, index, operations and consistency, so prepare reuses everything.
manifest() { # rate
  cat <<YAML
apiVersion: stampede.dev/v1alpha1
kind: StressTest
metadata: {name: client-cost}
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
    model: Open
    consistency: Bounded
    operations:
      - {name: search_vector, weight: 10, search: {topK: 10, params: {ef: 64}}}
      - {name: search_with_filter, weight: 3, search: {topK: 10, params: {ef: 64}, filter: 'category == "{category}"'}}
      - {name: batch_search, weight: 1, search: {topK: 10, nq: 5, params: {ef: 64}}}
  stages:
    - {duration: ${secs}s, rate: $1}
  recall: {sampleQueries: 100, topK: 10, share: 0.2}
YAML
}

run_stampede() { # rate tag
  manifest "$1" > "$out/stampede-$2.yaml"
  /usr/bin/time -f "%e %U %S %M" -o "$out/time-stampede-$2.txt" \
    target/release/stampede run -f "$out/stampede-$2.yaml" -o "$out/stampede-$2" --quiet >/dev/null
}

run_locust() { # rate tag
  local per_user
  per_user=$(python3 -c "print($1 / $users)")
  (cd "$out" && GRPC_GEVENT=$gevent USER_RATE=$per_user LOCUST_SUMMARY="locust-$2.json" \
    /usr/bin/time -f "%e %U %S %M" -o "time-locust-$2.txt" \
    ../../../.venv/bin/locust -f ../../locustfile.py --headless -u "$users" -r "$users" \
    -t "${secs}s" --only-summary --loglevel WARNING >"locust-$2.log" 2>&1)
}

echo "== offered load: $rate requests/s for ${secs}s (Locust: $users users, GRPC_GEVENT=$gevent)"
echo "-- stampede run (Open model, $rate/s)";  run_stampede "$rate" load
echo "-- locust ($users users x $(python3 -c "print($rate / $users)")/s)"; run_locust "$rate" load
echo "-- stampede run at 1/s (fixed cost)";      run_stampede 1 idle
echo "-- locust at 1/s (fixed cost)";            run_locust 1 idle

python3 - "$out" "$rate" "$secs" "$users" "$gevent" <<'PY'
import json, sys
out, rate, secs, users, gevent = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]

def cpu(name):
    wall, user, system, rss_kb = open(f"{out}/time-{name}.txt").read().split()[-4:]
    return float(user) + float(system), float(wall), int(rss_kb) / 1024

def stampede(tag):
    r = json.load(open(f"{out}/stampede-{tag}/result.json"))
    t = r["totals"]
    return t["requests"], t["failures"], t["qps"], t["p50Ms"], t["p95Ms"]

def locust(tag):
    r = json.load(open(f"{out}/locust-{tag}.json"))
    return r["requests"], r["failures"], r["rps"], r["p50_ms"], r["p95_ms"]

rows = {}
for gen, read in (("stampede", stampede), ("locust", locust)):
    n, fails, qps, p50, p95 = read("load")
    n0 = read("idle")[0]
    c, wall, rss = cpu(f"{gen}-load")
    c0 = cpu(f"{gen}-idle")[0]
    marginal = (c - c0) / max(n - n0, 1) * 1000
    whole = c / max(n, 1) * 1000
    rows[gen] = (marginal, whole)
    print(f"{gen:9s} requests {n:6d} (failures {fails}), achieved {qps:6.1f}/s, P50 {p50:.1f} ms, P95 {p95:.1f} ms; "
          f"CPU {c:6.2f} s (at 1/s: {c0:.2f} s, {n0} requests), wall {wall:.1f} s, max RSS {rss:.0f} MB")
    print(f"{'':9s} CPU per 1,000 requests: marginal {marginal * 1000:8.1f} ms, whole process {whole * 1000:8.1f} ms")
m = rows["locust"][0] / max(rows["stampede"][0], 1e-9)
w = rows["locust"][1] / max(rows["stampede"][1], 1e-9)
print(f"Locust / Stampede CPU per request: marginal {m:.1f}x, whole process {w:.1f}x (goal: >= 20x)")
PY
