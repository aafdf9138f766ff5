"""`semsearch bench peers`: the served stack against a peer a user would pick instead, on this
machine, side by side: a Chroma server (`chroma run`, HNSW, HTTP) with chromadb's HttpClient.

Both get the same clustered 384-d vectors (semsearch bench indexer's generator, shaped like sentence
embeddings) and the same held-out queries; each is run at its first setting, on a ladder of doubling
search depths (IVF lists probed for the stack, HNSW ef_search for Chroma), whose recall@10 against
exact search reaches the target. Then rounds alternate between them: one client's latency, then 8
clients' throughput (threads with their own connections, the same for both), and the medians over
rounds give the ratios. CPU ms per query of the servers comes from their own counters.

Chroma runs from .venv-peers (scripts/setup.sh) through semsearch/tools/bench/chroma_peer.py; its
server binds 127.0.0.1 on a free port and is stopped by the bench."""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from tqdm import tqdm

from semsearch.client import Item, SemsearchClient
from semsearch.procs import ManagedProcess, free_port
from semsearch.tools.bench.cpu import CpuMeter
from semsearch.tools.bench.indexer import clustered_vectors
from semsearch.tools.eval_search import exact_topk, wait_indexed
from semsearch.tools.stack import Stack

log = logging.getLogger(__name__)

COLLECTION = "peers"
K = 10
BATCH = 1_000
NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
EF_SEARCHES = (10, 20, 40, 80, 160, 320, 640)
MAX_CALLS = 100_000
GOAL_P50_RATIO = 0.5
GOAL_QPS8_RATIO = 2.0
# The peers' environment at the repository root (SEMSEARCH_PEERS_PYTHON overrides).
PEERS_PYTHON = Path(
    os.environ.get("SEMSEARCH_PEERS_PYTHON", Path(__file__).resolve().parents[3] / ".venv-peers/bin/python")
)
PEER_SCRIPT = Path(__file__).with_name("chroma_peer.py")


class Chroma:
    """A `chroma run` server and the peer script driving it (one JSON command per line)."""

    def __init__(self, work: Path, python: Path) -> None:
        chroma = python.parent / "chroma"
        if not python.exists() or not chroma.exists():
            raise SystemExit(f"{python} or {chroma} is missing: scripts/setup.sh installs the peers")
        self.port = free_port()
        self.server = ManagedProcess(
            "chroma",
            [str(chroma), "run", "--host", "127.0.0.1", "--port", str(self.port), "--path", str(work / "db")],
            log_path=work / "chroma.log",
        )
        self.server.start(self._heartbeat, 120)
        try:
            self.driver = subprocess.Popen(
                [str(python), str(PEER_SCRIPT), "127.0.0.1", str(self.port)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        except BaseException:
            self.server.stop()
            raise

    def _heartbeat(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v2/heartbeat", timeout=1):
                return True
        except OSError:
            return False

    def call(self, **command) -> dict:
        self.driver.stdin.write(json.dumps(command) + "\n")
        self.driver.stdin.flush()
        line = self.driver.stdout.readline()
        if not line:
            raise RuntimeError(f"the Chroma driver stopped (exit status {self.driver.wait()})")
        return json.loads(line)

    def stop(self) -> None:
        if self.driver.poll() is None:
            self.driver.stdin.close()
            try:
                self.driver.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.driver.kill()
        self.server.stop()


def _recall(found: list[list[int]], truth: list[set[int]]) -> float:
    return float(np.mean([len(set(f) & t) / len(t) for f, t in zip(found, truth)]))


def _stack_search(client: SemsearchClient, q: np.ndarray, nprobe: int) -> list[int]:
    response = client.search(COLLECTION, vector=q, k=K, nprobe=nprobe, no_cache=True)
    return [int(h.id[1:]) for h in response.hits]


def _stack_latency(client: SemsearchClient, queries: np.ndarray, nprobe: int, seconds: float) -> list[float]:
    for q in queries[:5]:
        _stack_search(client, q, nprobe)
    ms, deadline = [], time.perf_counter() + seconds
    for i in range(MAX_CALLS):
        if time.perf_counter() >= deadline:
            break
        begin = time.perf_counter()
        _stack_search(client, queries[i % len(queries)], nprobe)
        ms.append((time.perf_counter() - begin) * 1000)
    return ms


def _stack_qps(
    address: str, queries: np.ndarray, nprobe: int, clients: int, seconds: float
) -> tuple[float, int]:
    """Queries/s of `clients` threads, each with its own SDK client (its own connection), and the
    number of timed calls."""
    sdks = [SemsearchClient(address, timeout_s=60) for _ in range(clients)]
    try:
        for sdk in sdks:
            _stack_search(sdk, queries[0], nprobe)
        done = [0] * clients
        begin = time.perf_counter()
        deadline = begin + seconds

        def loop(c: int) -> None:
            for j in range(MAX_CALLS // clients):
                if time.perf_counter() >= deadline:
                    return
                _stack_search(sdks[c], queries[(c + j * clients) % len(queries)], nprobe)
                done[c] += 1

        threads = [threading.Thread(target=loop, args=(c,)) for c in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(done) / (time.perf_counter() - begin), sum(done)
    finally:
        for sdk in sdks:
            sdk.close()


def _stack_processes(stack: Stack) -> list[int]:
    return [stack.gateway.pid, stack.redis.pid, *(s.process.pid for s in stack.shards)]


def bench(
    repository: Path,
    *,
    n: int = 200_000,
    dim: int = 384,
    queries: int = 1_000,
    recall_target: float = 0.95,
    rounds: int = 3,
    seconds: float = 5.0,
    clients: int = 8,
    shards: int = 2,
    seed: int = 11,
    peers_python: Path = PEERS_PYTHON,
) -> tuple[list[tuple[str, ...]], dict]:
    """Table rows and the JSON summary (module docstring)."""
    log.info("generating %d + %d clustered vectors of dim %d (seed %d)", n, queries, dim, seed)
    data = clustered_vectors(n + queries, dim, seed)
    base, held = data[:n], data[n:]
    truth = exact_topk(base, None, held, K)
    work = Path(tempfile.mkdtemp(prefix="semsearch-bench-peers-"))
    np.save(work / "base.npy", base)
    np.save(work / "queries.npy", held)
    stack: Stack | None = None
    chroma: Chroma | None = None
    client: SemsearchClient | None = None
    try:
        stack = Stack(
            work / "stack", repository, num_shards=shards, env={"SEMSEARCH_AUTO_TRAIN_INTERVAL_S": "2"}
        )
        stack.start()
        client = SemsearchClient(stack.gateway_address, timeout_s=120)
        # Trained at the default size (50,000 items), or at half the data for a smaller run.
        client.create_collection(COLLECTION, dim=dim, exact_until=min(50_000, max(1_000, n // 2)))
        begin = time.perf_counter()
        for start in tqdm(range(0, n, BATCH), desc="stack: ingest", unit="batch"):
            chunk = range(start, min(start + BATCH, n))
            response = client.upsert(COLLECTION, [Item(id=f"v{i}", vector=base[i]) for i in chunk])
            if response.succeeded != len(chunk):
                raise RuntimeError(f"ingest failed: {next(r.error for r in response.results if not r.ok)}")
        wait_indexed(client, COLLECTION)
        stack_load_s = time.perf_counter() - begin
        index = client.describe_collection(COLLECTION).index

        log.info("chroma: starting the server and adding %d vectors", n)
        chroma = Chroma(work / "chroma", peers_python)
        chroma_load = chroma.call(op="load", path=str(work / "base.npy"), space="cosine")

        # Each at its first setting reaching the recall target (recall over all held-out queries).
        ladder: dict[str, list[tuple[int, float]]] = {"stack": [], "chroma": []}
        for nprobe in NPROBES:
            found = [_stack_search(client, q, nprobe) for q in held]
            ladder["stack"].append((nprobe, _recall(found, truth)))
            if ladder["stack"][-1][1] >= recall_target:
                break
        for ef in EF_SEARCHES:
            chroma.call(op="ef", ef=ef)
            found = chroma.call(op="search", path=str(work / "queries.npy"), k=K)["ids"]
            ladder["chroma"].append((ef, _recall(found, truth)))
            if ladder["chroma"][-1][1] >= recall_target:
                break
        nprobe, stack_recall = ladder["stack"][-1]
        ef, chroma_recall = ladder["chroma"][-1]

        # Interleaved rounds: latency (1 client), then throughput (`clients` clients), each in turn.
        p50 = {"stack": [], "chroma": []}
        qps = {"stack": [], "chroma": []}
        cpu = {"stack": [], "chroma": []}
        stack_meter = CpuMeter({"server": _stack_processes(stack)})
        chroma_meter = CpuMeter({"server": [chroma.server.pid]})
        for r in range(rounds):
            log.info("round %d of %d", r + 1, rounds)
            p50["stack"].append(statistics.median(_stack_latency(client, held, nprobe, seconds)))
            p50["chroma"].append(
                statistics.median(
                    chroma.call(op="latency", path=str(work / "queries.npy"), seconds=seconds)["ms"]
                )
            )
            stack_meter.start()
            rate, calls = _stack_qps(stack.gateway_address, held, nprobe, clients, seconds)
            cpu["stack"].append(stack_meter.stop(calls)["server"])
            qps["stack"].append(rate)
            chroma_meter.start()
            answer = chroma.call(op="qps", path=str(work / "queries.npy"), clients=clients, seconds=seconds)
            cpu["chroma"].append(chroma_meter.stop(answer["calls"])["server"])
            qps["chroma"].append(answer["qps"])
    finally:
        if client is not None:
            client.close()
        if chroma is not None:
            chroma.stop()
        if stack is not None:
            stack.stop()
        shutil.rmtree(work, ignore_errors=True)

    med = {k: {"p50": statistics.median(p50[k]), "qps": statistics.median(qps[k]),
               "cpu": statistics.median(cpu[k])} for k in ("stack", "chroma")}  # fmt: skip
    p50_ratio = med["stack"]["p50"] / med["chroma"]["p50"]
    qps_ratio = med["stack"]["qps"] / med["chroma"]["qps"]
    summary = {
        "n": n,
        "dim": dim,
        "queries": queries,
        "shards": shards,
        "clients": clients,
        "rounds": rounds,
        "seconds_per_measurement": seconds,
        "recall_target": recall_target,
        "stack_index": index,
        "stack_nprobe": nprobe,
        "stack_recall_at_10": round(stack_recall, 4),
        "stack_ladder": [[p, round(x, 4)] for p, x in ladder["stack"]],
        "chroma_ef_search": ef,
        "chroma_recall_at_10": round(chroma_recall, 4),
        "chroma_ladder": [[p, round(x, 4)] for p, x in ladder["chroma"]],
        "stack_load_seconds": round(stack_load_s, 1),
        "chroma_load_seconds": round(chroma_load["seconds"], 1),
        "stack_p50_ms": round(med["stack"]["p50"], 3),
        "chroma_p50_ms": round(med["chroma"]["p50"], 3),
        "stack_p50_ms_rounds": [round(x, 3) for x in p50["stack"]],
        "chroma_p50_ms_rounds": [round(x, 3) for x in p50["chroma"]],
        "stack_qps8": round(med["stack"]["qps"], 1),
        "chroma_qps8": round(med["chroma"]["qps"], 1),
        "stack_qps8_rounds": [round(x, 1) for x in qps["stack"]],
        "chroma_qps8_rounds": [round(x, 1) for x in qps["chroma"]],
        "stack_server_cpu_ms_per_query": round(med["stack"]["cpu"], 3),
        "chroma_server_cpu_ms_per_query": round(med["chroma"]["cpu"], 3),
        "p50_ratio_to_chroma": round(p50_ratio, 3),
        "qps8_ratio_to_chroma": round(qps_ratio, 3),
        "goals": {"p50_ratio_to_chroma_max": GOAL_P50_RATIO, "qps8_ratio_to_chroma_min": GOAL_QPS8_RATIO},
        "goals_met": {
            # Each side's ladder ends at its deepest rung even below the target: then this says so.
            "recall_at_10_stack": stack_recall >= recall_target,
            "recall_at_10_chroma": chroma_recall >= recall_target,
            "p50_ratio_to_chroma": p50_ratio <= GOAL_P50_RATIO,
            "qps8_ratio_to_chroma": qps_ratio >= GOAL_QPS8_RATIO,
        },
    }
    rows = [
        ("data", f"{n:,} x {dim} clustered, {queries:,} held-out queries", "", ""),
        ("index", f"{index}, {shards} shards, via the gateway", "HNSW (chroma run, HTTP)", ""),
        (
            "setting (first reaching recall@10 >= " + f"{recall_target})",
            f"nprobe {nprobe}",
            f"ef_search {ef}",
            "",
        ),
        ("recall@10", f"{stack_recall:.4f}", f"{chroma_recall:.4f}", ""),
        ("load (add + index)", f"{stack_load_s:.0f} s", f"{chroma_load['seconds']:.0f} s", ""),
        (
            f"p50 ms, 1 client (median of {rounds} rounds)",
            f"{med['stack']['p50']:.2f}",
            f"{med['chroma']['p50']:.2f}",
            f"{p50_ratio:.3f} (goal <= {GOAL_P50_RATIO})",
        ),
        (
            f"QPS, {clients} clients (median of {rounds} rounds)",
            f"{med['stack']['qps']:.0f}",
            f"{med['chroma']['qps']:.0f}",
            f"{qps_ratio:.3f} (goal >= {GOAL_QPS8_RATIO})",
        ),
        (
            "server CPU ms per query",
            f"{med['stack']['cpu']:.2f}",
            f"{med['chroma']['cpu']:.2f}",
            f"{med['stack']['cpu'] / med['chroma']['cpu']:.3f}",
        ),
    ]
    return rows, summary
