"""Baseline for the insert benchmark: the classic pymilvus way of loading a stress-test collection.

One process, 768-d vectors drawn from a normal distribution and normalised (as the classic Locust
scenario does), a categorical `category` field, 10,000-row batches, explicit INT64 keys.
Prints rows/s of the insert phase (generation included, as a user script would run it).

    .venv/bin/python bench/pymilvus_insert.py --rows 100000 --dim 768
"""
import argparse
import json
import time

import numpy as np
from pymilvus import Collection, CollectionSchema, DataType, FieldSchema, connections, utility


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--uri", default="127.0.0.1:19530")
    p.add_argument("--collection", default="bench_pymilvus_insert")
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--batch", type=int, default=10_000)
    a = p.parse_args()

    host, port = a.uri.rsplit(":", 1)
    connections.connect(host=host, port=port)
    if utility.has_collection(a.collection):
        utility.drop_collection(a.collection)
    schema = CollectionSchema([
        FieldSchema("id", DataType.INT64, is_primary=True, auto_id=False),
        FieldSchema("embedding", DataType.FLOAT_VECTOR, dim=a.dim),
        FieldSchema("category", DataType.VARCHAR, max_length=10),
    ])
    coll = Collection(a.collection, schema)
    rng = np.random.default_rng(42)
    categories = np.array(["A", "B", "C", "D"])

    start = time.perf_counter()
    done = 0
    while done < a.rows:
        n = min(a.batch, a.rows - done)
        vecs = rng.normal(size=(n, a.dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        ids = list(range(done, done + n))
        cats = categories[rng.integers(0, 4, size=n)].tolist()
        coll.insert([ids, vecs.tolist(), cats])
        done += n
    secs = time.perf_counter() - start
    print(json.dumps({"tool": "pymilvus", "rows": done, "seconds": round(secs, 2),
                      "rows_per_second": round(done / secs)}))
    utility.drop_collection(a.collection)


if __name__ == "__main__":
    main()
