"""Several gateway processes on one port (SEMSEARCH_GATEWAY_WORKERS > 1).

One Python process serves one core's worth of requests (the event loop and protobuf decoding hold
the GIL). With N workers this process becomes a supervisor: it starts N `python -m services.gateway`
workers that bind the same address with SO_REUSEPORT (the kernel spreads new connections over them;
a client's channel stays on one worker), serves their merged Prometheus metrics (prometheus_client's
multiprocess mode) on the metrics port, restarts a worker that dies, and on SIGTERM/SIGINT stops them
all gracefully. Each worker holds its own clients of Triton, Redis and the shards; the result cache
and its invalidation are shared through Redis, so every worker sees every other worker's writes."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from prometheus_client import CollectorRegistry, multiprocess, start_http_server

from services.gateway.config import GatewaySettings

log = logging.getLogger(__name__)

# The environment variable that makes `python -m services.gateway` a worker (its number).
WORKER_ENV = "SEMSEARCH_GATEWAY_WORKER"
# The supervisor's pid, given to each worker: a worker compares its parent with it, so it notices a
# supervisor that died before the worker started watching (its parent is then already someone else).
SUPERVISOR_ENV = "SEMSEARCH_GATEWAY_SUPERVISOR_PID"
# A worker that exits with status 1 before it has run this many seconds, on its first start, failed to
# start (a configuration error every worker would hit): the supervisor stops instead of restarting it
# in a loop. Later exits are restarted with back-off.
STARTUP_S = 10.0
RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
POLL_S = 0.2
# Each worker drains its in-flight calls for up to 10 s on SIGTERM (semsearch.rpc.serve); then killed.
STOP_GRACE_S = 15.0


def worker_env(index: int, metrics_dir: str) -> dict[str, str]:
    """The environment variables a supervisor gives worker `index`."""
    return {WORKER_ENV: str(index), SUPERVISOR_ENV: str(os.getpid()), "PROMETHEUS_MULTIPROC_DIR": metrics_dir}


def worker_index() -> int | None:
    """This process's worker number when a supervisor started it, else None."""
    value = os.environ.get(WORKER_ENV)
    return int(value) if value else None


async def stop_when_orphaned(interval_s: float = 1.0) -> None:
    """In a worker: SIGTERM itself (a graceful stop) when its supervisor is gone, so that a killed
    supervisor does not leave workers serving the port with nobody watching them."""
    parent = int(os.environ.get(SUPERVISOR_ENV) or os.getppid())
    while True:
        if os.getppid() != parent:
            log.error("the gateway's supervisor (pid %d) is gone; stopping this worker", parent)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        await asyncio.sleep(interval_s)


class Worker:
    def __init__(self, index: int, env: dict[str, str]) -> None:
        self.index = index
        self.env = env
        self.process: subprocess.Popen | None = None
        self.started_at = 0.0
        self.failures = 0
        self.restart_at: float | None = None
        self.ever_ran = False  # ran STARTUP_S once

    def start(self) -> None:
        # Workers inherit stdout/stderr (one log) and stay in the supervisor's process group.
        self.process = subprocess.Popen([sys.executable, "-m", "services.gateway"], env=self.env)
        self.started_at = time.monotonic()
        log.info("gateway worker %d started (pid %d)", self.index, self.process.pid)


def supervise(settings: GatewaySettings) -> int:
    """Run `settings.workers` workers until a signal; the exit status of the gateway."""
    if settings.port == 0:
        raise RuntimeError("SEMSEARCH_GATEWAY_WORKERS > 1 needs a fixed SEMSEARCH_GATEWAY_PORT (not 0)")
    metrics_dir = tempfile.mkdtemp(prefix="semsearch-gateway-metrics-")
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    workers = []
    for index in range(settings.workers):
        env = dict(os.environ, **worker_env(index, metrics_dir))
        workers.append(Worker(index, env))
    status = 0
    try:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=metrics_dir)
        start_http_server(settings.metrics_port, addr=settings.host, registry=registry)
        for worker in workers:
            worker.start()
        log.info(
            "gateway: %d workers on %s:%d, metrics on %d",
            len(workers), settings.host, settings.port, settings.metrics_port,
        )  # fmt: skip
        while not stopping.wait(POLL_S):
            status = _tend(workers, metrics_dir)
            if status:
                break
    finally:
        _stop_all(workers)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return status


def _tend(workers: list[Worker], metrics_dir: str) -> int:
    """Restart dead workers (with back-off); non-zero: a worker cannot start, stop the gateway."""
    now = time.monotonic()
    for worker in workers:
        if worker.restart_at is not None:
            if now >= worker.restart_at:
                worker.restart_at = None
                worker.start()
            continue
        code = worker.process.poll() if worker.process is not None else None
        if code is None:
            worker.ever_ran = worker.ever_ran or now - worker.started_at >= STARTUP_S
            continue
        multiprocess.mark_process_dead(worker.process.pid, metrics_dir)
        if not worker.ever_ran and now - worker.started_at < STARTUP_S and code == 1:
            log.error("gateway worker %d could not start (exit status 1); stopping", worker.index)
            return 1
        worker.failures = worker.failures + 1 if now - worker.started_at < 60 else 1
        delay = RESTART_BACKOFF_S[min(worker.failures, len(RESTART_BACKOFF_S)) - 1]
        log.error("gateway worker %d exited (status %d); restarting in %.0fs", worker.index, code, delay)
        worker.restart_at = now + delay
    return 0


def _stop_all(workers: list[Worker]) -> None:
    """SIGTERM every worker (each drains its in-flight calls), SIGKILL what is left after the grace."""
    running = [w.process for w in workers if w.process is not None and w.process.poll() is None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for process in running:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("gateway worker (pid %d) did not stop in time; killing it", process.pid)
            process.kill()
            process.wait()
