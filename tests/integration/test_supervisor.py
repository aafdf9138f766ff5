"""The supervised local stack (`semsearch up`): parts that die come back, `up` on a degraded stack
starts no second stack, one writer per data directory, rolling restarts under load, `down` leaves
nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from semsearch.client import Item, SemsearchClient
from tests.conftest import create_demo_collections

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def semsearch(home: Path, repository: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, SEMSEARCH_HOME=str(home), SEMSEARCH_MODEL_REPOSITORY=str(repository))
    result = subprocess.run(
        [sys.executable, "-m", "semsearch", *args],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=ROOT,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def processes_of(home: Path) -> dict[int, str]:
    """Every running process of the stack in `home`: its command line or environment mentions the home,
    or it is redis-server on the stack's port (redis rewrites both)."""
    state = json.loads((home / "stack.json").read_text()) if (home / "stack.json").exists() else {}
    redis_port = state.get("redis_url", "").rsplit(":", 1)[-1].split("/")[0]
    needles = [str(home).encode()] + ([f"127.0.0.1:{redis_port}".encode()] if redis_port else [])
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if any(n in cmdline or n in environ for n in needles):
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")[:120]
    return found


def status(home: Path, repository: Path) -> dict:
    out = semsearch(home, repository, "status", "--json", check=False).stdout
    return json.loads(out.strip().splitlines()[-1])


def part(report: dict, name: str) -> dict:
    return next(p for p in report["parts"] if p["part"] == name)


def wait_for(condition, timeout: float = 60, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


@pytest.fixture(scope="module")
def stack(model_repository, tmp_path_factory):
    home = tmp_path_factory.mktemp("supervised")
    try:
        result = semsearch(home, model_repository, "up", "--shards", "2")
        assert "gateway" in result.stdout
        report = status(home, model_repository)
        with SemsearchClient(report["gateway"]) as client:
            create_demo_collections(client)
        yield home, model_repository, report["gateway"]
    finally:
        semsearch(home, model_repository, "down", check=False)


def test_status_reports_every_part_and_the_coverage(stack):
    home, repository, _ = stack
    report = status(home, repository)
    assert report["running"]
    states = {p["part"]: p["state"] for p in report["parts"]}
    parts = ("gateway", "shard-0", "shard-1", "triton", "redis", "explorer")
    assert states == dict.fromkeys(parts, "serving")
    assert report["explorer"].startswith("http://127.0.0.1:")
    assert part(report, "gateway")["coverage"] == "2/2"
    table = semsearch(home, repository, "status").stdout
    assert "shard coverage the gateway can offer now: 2/2" in table


def test_a_shard_killed_under_writes_comes_back_with_every_acknowledged_item(stack):
    home, repository, gateway = stack
    acked: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        rng = np.random.default_rng(0)
        with SemsearchClient(gateway, timeout_s=10) as client:
            for batch in range(10_000):
                if stop.is_set():
                    return
                items = [Item(id=f"w{batch}-{i}", vector=rng.normal(size=384)) for i in range(20)]
                try:
                    response = client.upsert("texts", items)
                except grpc.RpcError:
                    continue
                acked.extend(r.id for r in response.results if r.ok)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        wait_for(lambda: len(acked) > 200)
        victim = part(status(home, repository), "shard-1")["pid"]
        os.kill(victim, signal.SIGKILL)
        report = wait_for(
            lambda: (
                (r := status(home, repository))
                and part(r, "shard-1")["restarts"] >= 1
                and part(r, "shard-1")["state"] == "serving"
                and r
            ),
            timeout=90,
        )
        assert part(report, "shard-1")["pid"] != victim
        time.sleep(1)  # writes reach the restarted shard again
    finally:
        stop.set()
        thread.join(30)
    with SemsearchClient(gateway, timeout_s=30) as client:
        missing = []
        for start in range(0, len(acked), 500):
            missing += list(client.get("texts", acked[start : start + 500]).missing)
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged items lost"


def test_up_on_a_degraded_stack_restarts_only_the_dead_part(stack):
    home, repository, _ = stack
    before = processes_of(home)
    count = {kind: sum(kind in cmd for cmd in before.values()) for kind in ("tritonserver", "redis-server")}
    assert count == {"tritonserver": 1, "redis-server": 1}, before
    victim = part(status(home, repository), "shard-0")["pid"]
    os.kill(victim, signal.SIGKILL)
    result = semsearch(home, repository, "up", "--shards", "2")
    assert "already running" in result.stdout
    report = wait_for(
        lambda: (r := status(home, repository)) and part(r, "shard-0")["state"] == "serving" and r
    )
    assert part(report, "shard-0")["pid"] != victim
    after = processes_of(home)
    assert {kind: sum(kind in cmd for cmd in after.values()) for kind in count} == count, after
    assert len(after) == len(before), (before, after)  # no second stack, no orphan


def test_a_second_shard_on_the_same_data_directory_exits_and_writes_nothing(stack):
    home, repository, _ = stack
    data_dir = home / "stack" / "shard-0"
    listing = {p: p.stat().st_mtime_ns for p in data_dir.rglob("*") if p.name != "shard.log"}
    env = dict(os.environ, SEMSEARCH_SHARD="0", SEMSEARCH_NUM_SHARDS="2", SEMSEARCH_DATA_DIR=str(data_dir),
               SEMSEARCH_INDEXER_PORT="1", SEMSEARCH_INDEXER_METRICS_PORT="0")  # fmt: skip
    argv = [sys.executable, "-m", "services.indexer"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    holder = part(status(home, repository), "shard-0")["pid"]
    assert result.returncode == 1
    assert f"in use by pid {holder}" in result.stdout + result.stderr
    assert {p: p.stat().st_mtime_ns for p in data_dir.rglob("*") if p.name != "shard.log"} == listing


def test_rolling_restarts_answer_every_search(stack):
    home, repository, gateway = stack
    answers: list[int] = []
    failures: list[str] = []
    stop = threading.Event()

    def searcher() -> None:
        with SemsearchClient(gateway, timeout_s=10) as client:
            vector = np.ones(384)
            for _ in range(100_000):
                if stop.is_set():
                    return
                try:
                    response = client.search("texts", vector=vector, k=5, min_coverage=0.5, no_cache=True)
                    answers.append(response.shards_answered)
                except grpc.RpcError as exc:
                    failures.append(f"{exc.code().name}: {exc.details()}")
                time.sleep(0.01)

    thread = threading.Thread(target=searcher)
    thread.start()
    try:
        for shard in ("0", "1"):
            result = semsearch(home, repository, "restart", "shard", shard)
            assert "restarted" in result.stdout
    finally:
        stop.set()
        thread.join(30)
    assert not failures, failures[:3]
    assert len(answers) > 20 and 1 in answers  # partial coverage was answered and reported
    with SemsearchClient(gateway, timeout_s=10) as client:  # and the gateway reconnects to both
        wait_for(lambda: client.search("texts", vector=np.ones(384), k=5, no_cache=True).shards_answered == 2)


def test_down_leaves_no_process_behind(model_repository, tmp_path):
    home = tmp_path / "short-lived"
    semsearch(home, model_repository, "up", "--shards", "1")
    state = (home / "stack.json").read_text()
    running = processes_of(home)
    assert sum("redis-server" in cmd for cmd in running.values()) == 1, running
    # A stale entry: the supervisor dies (SIGKILL), its parts keep running as orphans.
    supervisor = json.loads((home / "stack.json").read_text())["supervisor_pid"]
    os.kill(supervisor, signal.SIGKILL)
    time.sleep(0.5)
    assert processes_of(home)
    result = semsearch(home, model_repository, "down")
    assert "stopped" in result.stdout
    (home / "stack.json").write_text(state)  # only to find redis-server by its port below
    wait_for(lambda: not processes_of(home), timeout=30)


def test_a_stack_left_by_an_error_stops_every_part(model_repository, tmp_path):
    """Test fixtures and tools load data into a fresh stack; when loading fails, `with` stops it."""
    from semsearch.tools.stack import Stack

    pids: dict[str, int] = {}
    stack = Stack(tmp_path / "stack", model_repository, num_shards=1)
    with pytest.raises(RuntimeError, match="loading failed"), stack.start():
        pids = stack.state().pids
        raise RuntimeError("loading failed")
    assert set(pids) >= {"redis", "triton", "gateway", "shard-0"}
    for pid in pids.values():
        wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists() or b"Z" in _state(pid), timeout=30)


def _state(pid: int) -> bytes:
    """The process state letter (Z: a zombie that has exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return b"Z"
