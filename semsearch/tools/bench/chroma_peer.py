"""The Chroma side of `semsearch bench peers`, run by the bench with the peers' own Python
(.venv-peers, made by scripts/setup.sh: chromadb brings the CPU onnxruntime, which must not share a
virtual environment with onnxruntime-gpu). It imports only the standard library, numpy and chromadb.

It talks to a `chroma run` server over HTTP with chromadb's HttpClient, as an application would, and
takes one JSON command per line on stdin, answering one JSON line on stdout:
  {"op": "load", "path": "base.npy", "space": "cosine"}      -> {"seconds": ...}
  {"op": "ef", "ef": 40}                                      -> {}
  {"op": "search", "path": "queries.npy", "k": 10}            -> {"ids": [[row, ...], ...]}
  {"op": "latency", "path": "queries.npy", "seconds": 5}      -> {"ms": [...]}
  {"op": "qps", "path": "queries.npy", "clients": 8, "seconds": 5} -> {"qps": ..., "calls": ...}
Every loop is bounded in count and time."""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time

import chromadb
import numpy as np

COLLECTION = "peers"
MAX_CALLS = 100_000


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    client = chromadb.HttpClient(host=host, port=port)
    state: dict = {}
    for line in sys.stdin:
        command = json.loads(line)
        answer = OPS[command["op"]](client, state, command)
        print(json.dumps(answer), flush=True)


def load(client, state: dict, command: dict) -> dict:
    base = np.load(command["path"])
    with contextlib.suppress(Exception):  # not there yet
        client.delete_collection(COLLECTION)
    collection = client.create_collection(
        COLLECTION, configuration={"hnsw": {"space": command.get("space", "cosine")}}
    )
    batch = min(5_000, client.get_max_batch_size())
    begin = time.perf_counter()
    for start in range(0, len(base), batch):
        rows = base[start : start + batch]
        collection.add(ids=[f"v{start + i}" for i in range(len(rows))], embeddings=rows)
    state["collection"] = collection
    return {"seconds": time.perf_counter() - begin, "count": collection.count()}


def ef(client, state: dict, command: dict) -> dict:
    state["collection"].modify(configuration={"hnsw": {"ef_search": int(command["ef"])}})
    # A fresh handle, so that nothing client-side keeps the old setting.
    state["collection"] = client.get_collection(COLLECTION)
    return {}


def _query(collection, q: np.ndarray, k: int) -> list[int]:
    result = collection.query(query_embeddings=q[None, :], n_results=k, include=[])
    return [int(i[1:]) for i in result["ids"][0]]


def search(client, state: dict, command: dict) -> dict:
    queries = np.load(command["path"])
    return {"ids": [_query(state["collection"], q, command.get("k", 10)) for q in queries]}


def latency(client, state: dict, command: dict) -> dict:
    queries, collection = np.load(command["path"]), state["collection"]
    for q in queries[:5]:
        _query(collection, q, 10)
    ms, deadline = [], time.perf_counter() + command["seconds"]
    for i in range(MAX_CALLS):
        if time.perf_counter() >= deadline:
            break
        begin = time.perf_counter()
        _query(collection, queries[i % len(queries)], 10)
        ms.append((time.perf_counter() - begin) * 1000)
    return {"ms": ms}


def qps(client, state: dict, command: dict) -> dict:
    queries, clients = np.load(command["path"]), command["clients"]
    host, port = sys.argv[1], int(sys.argv[2])
    # One client (its own HTTP connection pool) per thread, as separate application threads would.
    collections = [
        chromadb.HttpClient(host=host, port=port).get_collection(COLLECTION) for _ in range(clients)
    ]
    for c in collections:
        _query(c, queries[0], 10)
    done = [0] * clients
    begin = time.perf_counter()
    deadline = begin + command["seconds"]

    def loop(c: int) -> None:
        for j in range(MAX_CALLS // clients):
            if time.perf_counter() >= deadline:
                return
            _query(collections[c], queries[(c + j * clients) % len(queries)], 10)
            done[c] += 1

    threads = [threading.Thread(target=loop, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"qps": sum(done) / (time.perf_counter() - begin), "calls": sum(done)}


OPS = {"load": load, "ef": ef, "search": search, "latency": latency, "qps": qps}

if __name__ == "__main__":
    main()
