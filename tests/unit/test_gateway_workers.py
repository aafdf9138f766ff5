"""A gateway worker stops when its supervisor is gone, however early in its start the supervisor went.
Real processes: a stand-in supervisor starts a worker-like process and exits at once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.procs import alive

REPO = Path(__file__).resolve().parents[2]

# The worker-like process: a slow start (the supervisor is gone before it looks), then the watch.
WORKER = textwrap.dedent(
    """
    import asyncio, time
    from services.gateway.workers import stop_when_orphaned
    time.sleep(0.5)
    asyncio.run(stop_when_orphaned(interval_s=0.05))
    """
)

# The stand-in supervisor: starts the worker as the real one does (with its pid in the environment),
# prints the worker's pid and exits without waiting for it (the worker keeps none of its pipes).
SUPERVISOR = textwrap.dedent(
    """
    import os, subprocess, sys
    from services.gateway.workers import worker_env
    env = dict(os.environ, **worker_env(0, "unused"))
    worker = subprocess.Popen(
        [sys.executable, "-c", sys.argv[1]], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    print(worker.pid, flush=True)
    """
)


def test_a_worker_whose_supervisor_died_before_it_started_watching_stops():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", SUPERVISOR, WORKER], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    worker = int(out.stdout.split()[0])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and alive(worker):
        time.sleep(0.05)
    stopped = not alive(worker)
    if not stopped:
        os.kill(worker, 9)
    assert stopped, "the worker kept running after its supervisor was gone"
