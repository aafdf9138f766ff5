"""The /proc readers the process tests rely on hold while the process they read starts and ends
threads and opens and closes files (a gRPC server does both all the time)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

from tests.procs import children, established_ports

# Two sleeping children, then threads and files opened and closed until killed.
CHURN = textwrap.dedent(
    """
    import os, subprocess, sys, threading
    kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]) for _ in range(2)]
    print(" ".join(str(k.pid) for k in kids), flush=True)
    def open_and_close():
        os.close(os.open(os.devnull, os.O_RDONLY))
    while True:
        threads = [threading.Thread(target=open_and_close) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    """
)


def test_reading_a_process_that_starts_and_ends_threads_never_fails():
    churn = subprocess.Popen([sys.executable, "-c", CHURN], stdout=subprocess.PIPE, text=True)
    try:
        kids = sorted(int(p) for p in churn.stdout.readline().split())
        deadline = time.monotonic() + 2
        reads = 0
        while time.monotonic() < deadline and reads < 20_000:
            assert sorted(children(churn.pid)) == kids
            established_ports(churn.pid, 1)
            reads += 1
    finally:
        churn.kill()
        churn.wait()
        for kid in kids:
            subprocess.run(["kill", str(kid)], check=False)
