"""The gateway as 2 worker processes on one port (SEMSEARCH_GATEWAY_WORKERS=2) over the real local
stack: connections spread over both, the result cache stays correct across them, the supervisor
serves their merged metrics, restarts a worker that dies and stops them all."""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from semsearch.client import Item, SemsearchClient
from semsearch.tools.stack import Stack
from tests.procs import alive, children, established_ports

pytestmark = pytest.mark.integration

DIM = 16
CHANNELS = 16


def metric(body: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", body, re.MULTILINE))


def unit(seed: int) -> list[float]:
    v = np.random.default_rng(seed).normal(size=DIM)
    return (v / np.linalg.norm(v)).tolist()


@pytest.fixture(scope="module")
def stack(model_repository, tmp_path_factory):
    env = {"SEMSEARCH_GATEWAY_WORKERS": "2"}
    with Stack(tmp_path_factory.mktemp("stack"), model_repository, num_shards=2, env=env).start() as stack:
        with SemsearchClient(stack.gateway_address) as client:
            client.create_collection("plain", dim=DIM)
            client.upsert("plain", [Item(id=f"v{i}", vector=unit(i)) for i in range(100)])
        yield stack


def test_connections_spread_over_both_workers_and_the_cache_stays_correct_across_them(stack):
    workers = children(stack.gateway.pid)
    assert len(workers) == 2
    clients = [SemsearchClient(stack.gateway_address, timeout_s=30) for _ in range(CHANNELS)]
    try:
        query = unit(1000)
        first = [c.search("plain", vector=query, k=3) for c in clients]
        assert all([h.id for h in r.hits] == [h.id for h in first[0].hits] for r in first)
        assert sum(r.cached for r in first) >= CHANNELS - 2  # cached by whichever worker came first
        held = [established_ports(pid, stack.gateway_port) for pid in workers]
        assert sum(held) >= CHANNELS and min(held) >= 1, held
        # A write through one worker is seen by every other: no worker serves a stale cached result.
        clients[0].upsert("plain", [Item(id="best", vector=query)])
        after = [c.search("plain", vector=query, k=3) for c in clients]
        assert all(r.hits[0].id == "best" for r in after)
    finally:
        for c in clients:
            c.close()


def test_the_supervisor_serves_the_metrics_of_all_workers(stack):
    url = f"http://127.0.0.1:{stack.gateway_metrics_port}/metrics"
    before = metric(
        urllib.request.urlopen(url, timeout=5).read().decode(),
        "semsearch_gateway_search_duration_seconds_count",
    )
    clients = [SemsearchClient(stack.gateway_address, timeout_s=30) for _ in range(CHANNELS)]
    try:
        for i, c in enumerate(clients):
            c.search("plain", vector=unit(i), k=3, no_cache=True)
    finally:
        for c in clients:
            c.close()
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    assert metric(body, "semsearch_gateway_search_duration_seconds_count") - before == CHANNELS
    assert "semsearch_gateway_in_flight_requests" in body


def test_a_dead_worker_is_restarted_and_stopping_the_gateway_stops_every_worker(stack):
    workers = children(stack.gateway.pid)
    os.kill(workers[0], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = children(stack.gateway.pid)
        if len(now) == 2 and workers[0] not in now:
            break
        time.sleep(0.2)
    now = children(stack.gateway.pid)
    assert len(now) == 2 and workers[0] not in now
    with SemsearchClient(stack.gateway_address, timeout_s=30) as client:
        assert len(client.search("plain", vector=unit(3), k=3, no_cache=True).hits) == 3

    stack.gateway.stop()
    assert not any(Path(f"/proc/{pid}").exists() for pid in now)
    stack.start_gateway()
    workers = children(stack.gateway.pid)
    assert len(workers) == 2

    # A supervisor killed outright leaves no worker serving the port.
    os.kill(stack.gateway.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(alive(pid) for pid in workers):
        time.sleep(0.2)
    assert not any(alive(pid) for pid in workers)
    stack.gateway.stop()
    stack.start_gateway()  # the module's stack stays whole for the fixture's teardown
