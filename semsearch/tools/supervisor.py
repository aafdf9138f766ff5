"""The local stack's supervisor: one long-lived process per stack home that starts every part, restarts a
part that died (on its address, with back-off), performs rolling restarts, records every process it
ever started, and answers status over a Unix socket.

Why our own (small) supervisor and not supervisord or systemd: the parts pick free ports on their first
start and must keep them on every restart (peers know the addresses), readiness is a gRPC health or
HTTP check per part, Triton leaves shared memory to clean up, and shard 0 must learn every shard's
address; the Stack class already knows all of this, and systemd is not running on these machines."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from semsearch.core.durable import DirectoryInUse, DirectoryLock
from semsearch.procs import stop_process_group, tail

log = logging.getLogger(__name__)

STATE_FILE = "stack.json"
PIDS_FILE = "pids.jsonl"
SOCKET_FILE = "supervisor.sock"
CHECK_INTERVAL_S = 0.5
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0


@dataclass
class PartState:
    name: str
    restarts: int = 0
    last_exit: str = ""
    next_start_at: float = 0.0
    backoff_s: float = BACKOFF_FIRST_S
    # Set while the supervisor itself stops or starts the part (a rolling restart), so the watch loop
    # leaves it alone.
    busy: bool = False
    history: list[str] = field(default_factory=list)


def process_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc), to tell a recorded pid from a reused
    one; None when no such process runs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def record_pid(home: Path, name: str, pid: int | None) -> None:
    """Append a started process to the home's pid ledger (`semsearch down` stops them all)."""
    if pid:
        with open(home / PIDS_FILE, "a") as f:
            f.write(json.dumps({"name": name, "pid": pid, "ticks": process_start_ticks(pid)}) + "\n")


def stop_recorded(home: Path, grace: float = 20.0) -> list[str]:
    """Stop every process group in the home's pid ledger that still runs (matched by start time, so a
    reused pid is never touched); newest first. Returns their names."""
    ledger = home / PIDS_FILE
    if not ledger.exists():
        return []
    entries = [json.loads(line) for line in ledger.read_text().splitlines() if line.strip()]
    stopped = []
    for entry in reversed(entries):
        ticks = process_start_ticks(entry["pid"])
        if ticks is not None and ticks == entry["ticks"]:
            stop_process_group(entry["pid"], grace)
            stopped.append(entry["name"])
    ledger.unlink()
    return stopped


def ask(home: Path, command: dict, timeout: float = 5.0) -> dict | None:
    """Send one command to the home's supervisor; None when none answers."""
    path = home / SOCKET_FILE
    if not path.exists():
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(json.dumps(command).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    return json.loads(data) if data else None


class StartFailed(RuntimeError):
    """The supervisor exited before the stack was ready."""


def up(home: Path, repository: Path, *, shards: int, port: int | None, with_prometheus: bool,
       with_explorer: bool = True, timeout_s: float = 900) -> tuple[str, list[str]]:  # fmt: skip
    """Make the stack in `home` run: ask a running supervisor to start its dead parts (only those), or
    stop what an earlier, dead supervisor left behind and start a new one. Returns ("running" or
    "started", what was (re)started or cleaned up)."""
    home.mkdir(parents=True, exist_ok=True)
    reply = ask(home, {"cmd": "ensure"}, timeout=timeout_s)
    if reply is not None and "started" in reply:
        return "running", reply["started"]
    leftovers = stop_recorded(home)
    for name in (STATE_FILE, SOCKET_FILE):
        with contextlib.suppress(FileNotFoundError):
            (home / name).unlink()
    argv = [sys.executable, "-m", "semsearch.tools.supervisor", "--home", str(home),
            "--repository", str(repository), "--shards", str(shards)]  # fmt: skip
    if port:
        argv += ["--port", str(port)]
    if with_prometheus:
        argv.append("--with-prometheus")
    if not with_explorer:
        argv.append("--no-explorer")
    log_path = home / "supervisor.log"
    with open(log_path, "ab") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)  # fmt: skip
    record_pid(home, "supervisor", process.pid)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StartFailed(f"the stack did not start; see {log_path}:\n{tail(log_path)}")
        status = ask(home, {"cmd": "status"})
        if status is not None and status.get("ready"):
            return "started", [
                f"stopped leftovers of an earlier run: {', '.join(leftovers)}"
            ] if leftovers else []
        time.sleep(0.3)
    stop_process_group(process.pid, 30)
    raise StartFailed(f"the stack was not ready after {timeout_s:.0f}s; see {log_path}")


def down(home: Path, grace_s: float = 90) -> list[str]:
    """Stop the supervisor (it stops its parts in order) and then every process the stack ever started
    that still runs (parts of an earlier, dead supervisor included). Returns what was stopped."""
    stopped = []
    state_file = home / STATE_FILE
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    pid = state.get("supervisor_pid")
    if pid and process_start_ticks(pid) is not None:
        stop_process_group(pid, grace_s)
        stopped.append("supervisor and its parts")
    stopped += stop_recorded(home)
    prefix = state.get("triton_shm_prefix")
    if prefix:
        for leftover in Path("/dev/shm").glob(f"{prefix}*"):
            leftover.unlink(missing_ok=True)
    for name in (STATE_FILE, SOCKET_FILE):
        with contextlib.suppress(FileNotFoundError):
            (home / name).unlink()
    return stopped


class Supervisor:
    """Runs a Stack's parts and keeps them running until stop()."""

    def __init__(self, stack, home: Path) -> None:
        self.stack = stack
        self.home = Path(home)
        self.parts = {name: PartState(name) for name in stack.part_names()}
        self._lock = threading.RLock()  # serialises part starts and stops
        self._stop = threading.Event()
        self.ready = False

    # --- lifecycle ----------------------------------------------------------------------------

    def start_all(self) -> None:
        for name in self.stack.part_names():
            self._start(name)
        self.ready = True
        self.save_state()

    def _start(self, name: str) -> None:
        self.stack.start_part(name)
        record_pid(self.home, name, self.stack.part_pid(name))

    def save_state(self) -> None:
        state = self.stack.state().__dict__ | {
            "supervisor_pid": os.getpid(),
            "socket": str(self.home / SOCKET_FILE),
        }
        tmp = self.home / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.home / STATE_FILE)

    def watch(self) -> None:
        """Restart parts that died, with back-off, until stop()."""
        while not self._stop.wait(CHECK_INTERVAL_S):
            for part in self.parts.values():
                if part.busy or self._stop.is_set():
                    continue
                with self._lock:
                    if part.busy or self.stack.part_alive(part.name):
                        continue
                    if not part.last_exit:
                        part.last_exit = self._exit_reason(part.name)
                        log.warning(
                            "%s died (%s); restarting in %.0fs", part.name, part.last_exit, part.backoff_s
                        )
                        part.next_start_at = time.monotonic() + part.backoff_s
                    if time.monotonic() < part.next_start_at:
                        continue
                    self._restart_dead(part)

    def _restart_dead(self, part: PartState) -> None:
        try:
            self._start(part.name)
        except Exception as exc:
            part.backoff_s = min(BACKOFF_MAX_S, part.backoff_s * 2)
            part.next_start_at = time.monotonic() + part.backoff_s
            log.error("restarting %s failed (%s); next try in %.0fs", part.name, exc, part.backoff_s)
            return
        part.restarts += 1
        part.history.append(f"{time.strftime('%H:%M:%S')} restarted after: {part.last_exit}")
        log.info("%s restarted (restart %d)", part.name, part.restarts)
        part.last_exit, part.backoff_s = "", BACKOFF_FIRST_S
        self.save_state()

    def _exit_reason(self, name: str) -> str:
        code = self.stack.part_returncode(name)
        if code is None:
            return "not running"
        return f"killed by signal {-code}" if code < 0 else f"exited with code {code}"

    def restart(self, name: str) -> str:
        """Rolling restart of one part: graceful stop (a shard drains and snapshots), start on the same
        address, wait until ready. The other parts keep serving."""
        if name not in self.parts:
            return f"unknown part {name!r} (parts: {', '.join(self.parts)})"
        part = self.parts[name]
        with self._lock:
            part.busy = True
            try:
                self.stack.stop_part(name)
                self._start(name)
            finally:
                part.busy = False
            part.restarts += 1
            part.history.append(f"{time.strftime('%H:%M:%S')} rolling restart")
            self.save_state()
        return f"{name} restarted"

    def ensure(self) -> list[str]:
        """Start every dead part now (no back-off): what `semsearch up` on a running stack does."""
        started = []
        for part in self.parts.values():
            with self._lock:
                if not part.busy and not self.stack.part_alive(part.name):
                    part.last_exit = part.last_exit or self._exit_reason(part.name)
                    self._restart_dead(part)
                    started.append(part.name)
        return started

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self.stack.stop()

    # --- status -------------------------------------------------------------------------------

    def status(self) -> dict:
        parts = {}
        for name, part in self.parts.items():
            parts[name] = {
                "alive": self.stack.part_alive(name),
                "pid": self.stack.part_pid(name),
                "restarts": part.restarts,
                "last_exit": part.last_exit,
                "restarting": part.busy,
            }
        return {"ready": self.ready, "supervisor_pid": os.getpid(), "parts": parts}


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        supervisor: Supervisor = self.server.supervisor  # type: ignore[attr-defined]
        try:
            command = json.loads(self.rfile.readline())
            kind = command.get("cmd")
            if kind == "status":
                reply = supervisor.status()
            elif kind == "ensure":
                reply = {"started": supervisor.ensure()}
            elif kind == "restart":
                reply = {"message": supervisor.restart(command.get("part", ""))}
            else:
                reply = {"error": f"unknown command {kind!r}"}
        except Exception as exc:  # answer something readable rather than drop the connection
            log.exception("control command failed")
            reply = {"error": str(exc)}
        self.wfile.write(json.dumps(reply).encode() + b"\n")


def main(argv: list[str] | None = None) -> int:
    from semsearch.core.log import setup_logging
    from semsearch.tools.stack import Stack

    parser = argparse.ArgumentParser(
        description="Supervise the local semsearch stack (started by `semsearch up`)."
    )
    parser.add_argument("--home", required=True, help="the stack's home (state, logs, data)")
    parser.add_argument("--repository", required=True, help="Triton model repository")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--port", type=int, help="gateway port (default: a free one)")
    parser.add_argument("--with-prometheus", action="store_true")
    parser.add_argument("--no-explorer", action="store_true")
    args = parser.parse_args(argv)
    setup_logging()
    home = Path(args.home).resolve()
    try:
        lock = DirectoryLock(home, "semsearch stack supervisor").acquire()
    except DirectoryInUse as exc:
        log.error("%s", exc)
        return 1
    stack = Stack(home / "stack", Path(args.repository), num_shards=args.shards, gateway_port=args.port,
                  with_prometheus=args.with_prometheus, with_explorer=not args.no_explorer)  # fmt: skip
    supervisor = Supervisor(stack, home)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    with contextlib.suppress(FileNotFoundError):
        (home / SOCKET_FILE).unlink()
    server = socketserver.ThreadingUnixStreamServer(str(home / SOCKET_FILE), _Handler)
    server.daemon_threads = True
    server.supervisor = supervisor  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, name="control", daemon=True).start()
    try:
        supervisor.start_all()
    except Exception:
        log.exception("the stack did not start")
        supervisor.stop()
        server.shutdown()
        return 1
    log.info("stack ready; supervising %d parts", len(supervisor.parts))
    watcher = threading.Thread(target=supervisor.watch, name="watch", daemon=True)
    watcher.start()
    stopping.wait()
    log.info("stopping the stack")
    supervisor.stop()
    server.shutdown()
    for name in (STATE_FILE, SOCKET_FILE):
        with contextlib.suppress(FileNotFoundError):
            (home / name).unlink()
    lock.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
