"""The classic Locust + pymilvus load test, as the peer of `stampede run` in bench/client_cost.sh.

The scenario of examples/quickstart.yaml: weighted tasks search_vector (10), search_with_filter
(3, `category == "A"` etc.) and batch_search (1, nq=5), topK 10, HNSW ef 64, Bounded consistency,
on the collection `stampede_quickstart` (64-d `embedding`, `category`), prepared beforehand with
`target/release/stampede prepare -f examples/quickstart.yaml`.

Settings (environment):
  MILVUS_URI        127.0.0.1:19530
  COLLECTION        stampede_quickstart
  DIM               64
  USER_RATE         tasks per second per user (constant_throughput); users x USER_RATE = offered load
  LOCUST_SUMMARY    if set, a file to write the totals to (JSON) when Locust quits
  GRPC_GEVENT       1 (default): make gRPC gevent-aware with grpc.experimental.gevent.init_gevent(),
                    without which a blocking gRPC call stops every other greenlet (one request in
                    flight whatever the user count); 0: plain grpcio.

    GRPC_GEVENT=1 USER_RATE=5 .venv/bin/locust -f bench/locustfile.py --headless -u 20 -r 20 -t 30s
"""
import json
import os
import random
import time

# Locust has monkey-patched the standard library by now (importing locust does it); gRPC must be
# patched after that and before any channel exists.
if os.environ.get("GRPC_GEVENT", "1") == "1":
    import grpc.experimental.gevent as grpc_gevent

    grpc_gevent.init_gevent()

import numpy as np
from locust import User, constant_throughput, events, task
from pymilvus import Collection, connections

URI = os.environ.get("MILVUS_URI", "127.0.0.1:19530")
COLLECTION = os.environ.get("COLLECTION", "stampede_quickstart")
DIM = int(os.environ.get("DIM", "64"))
USER_RATE = float(os.environ.get("USER_RATE", "5"))
TOP_K = 10
PARAM = {"metric_type": "L2", "params": {"ef": 64}}
CATEGORIES = ["A", "B", "C", "D"]

# Query vectors: normal, normalised, as the classic scenario draws them; a pool made once, so the
# load generator's per-request work is the search call itself (Stampede also uses a query pool).
_rng = np.random.default_rng(7)
_pool = _rng.standard_normal((1024, DIM)).astype(np.float32)
_pool /= np.linalg.norm(_pool, axis=1, keepdims=True)
POOL = [v.tolist() for v in _pool]

_collection = None


def collection():
    """One connection (one gRPC channel) and one Collection handle shared by every user."""
    global _collection
    if _collection is None:
        host, port = URI.rsplit(":", 1)
        connections.connect(alias="default", host=host, port=port)
        _collection = Collection(COLLECTION)
    return _collection


@events.init.add_listener
def _connect(environment, **_kwargs):
    collection()


@events.quitting.add_listener
def _summary(environment, **_kwargs):
    """LOCUST_SUMMARY=FILE: the totals as JSON, for bench/client_cost.sh."""
    path = os.environ.get("LOCUST_SUMMARY")
    if not path:
        return
    total = environment.stats.total
    with open(path, "w") as f:
        json.dump(
            {
                "requests": total.num_requests,
                "failures": total.num_failures,
                "rps": total.total_rps,
                "seconds": total.last_request_timestamp - total.start_time
                if total.last_request_timestamp
                else 0.0,
                "p50_ms": total.get_response_time_percentile(0.5),
                "p95_ms": total.get_response_time_percentile(0.95),
                "grpc_gevent": os.environ.get("GRPC_GEVENT", "1") == "1",
            },
            f,
        )


class MilvusUser(User):
    wait_time = constant_throughput(USER_RATE)

    def _search(self, name, vectors, expr=None):
        start = time.perf_counter()
        exc = None
        try:
            collection().search(
                data=vectors,
                anns_field="embedding",
                param=PARAM,
                limit=TOP_K,
                expr=expr,
                consistency_level="Bounded",
            )
        except Exception as e:  # counted as a failure, as Locust users do
            exc = e
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - start) * 1000.0,
            response_length=0,
            exception=exc,
            context={},
        )

    @task(10)
    def search_vector(self):
        self._search("search_vector", [random.choice(POOL)])

    @task(3)
    def search_with_filter(self):
        self._search(
            "search_with_filter",
            [random.choice(POOL)],
            expr=f'category == "{random.choice(CATEGORIES)}"',
        )

    @task(1)
    def batch_search(self):
        self._search("batch_search", random.sample(POOL, 5))
