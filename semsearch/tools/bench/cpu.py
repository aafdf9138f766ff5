"""CPU time of processes, from their own counters (/proc/PID/stat): steadier than wall time on a
shared machine, and it shows where the cost of an operation is. A process counts with its
descendants (tritonserver's python-backend stubs are its children)."""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user + system CPU seconds) of a live process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _all_processes() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds) of every live process."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            found = _stat(int(entry.name))
            if found is not None:
                stats[int(entry.name)] = found
    return stats


def tree_cpu_seconds(pid: int, stats: dict[int, tuple[int, float]] | None = None) -> float:
    """CPU seconds of a process and its live descendants (from `stats`, or a fresh read of /proc)."""
    stats = _all_processes() if stats is None else stats
    children: dict[int, list[int]] = {}
    for child, (parent, _) in stats.items():
        children.setdefault(parent, []).append(child)
    total, stack = 0.0, [pid]
    while stack:
        current = stack.pop()
        if current in stats:
            total += stats[current][1]
            stack += children.get(current, [])
    return total


def own_cpu_seconds(pid: int) -> float:
    """CPU seconds of one process, without its descendants."""
    found = _stat(pid)
    return found[1] if found is not None else 0.0


class CpuMeter:
    """CPU milliseconds per operation of named processes between start() and stop(ops). Each process
    counts with its descendants, except "client" (the load generator: the stack under test may be its
    children)."""

    def __init__(self, processes: dict[str, list[int]]) -> None:
        self.processes = {name: [p for p in pids if p] for name, pids in processes.items()}
        self._before: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        stats = _all_processes()  # one read of /proc for every process watched

        def seconds(name: str, pid: int) -> float:
            return stats.get(pid, (0, 0.0))[1] if name == "client" else tree_cpu_seconds(pid, stats)

        return {name: sum(seconds(name, p) for p in pids) for name, pids in self.processes.items()}

    def start(self) -> None:
        self._before = self._now()

    def stop(self, operations: int) -> dict[str, float]:
        """ms of CPU per operation for each process, and "stack" (all of them but "client")."""
        after = self._now()
        per_op = {
            name: (after[name] - self._before[name]) * 1000 / max(operations, 1) for name in self.processes
        }
        per_op["stack"] = sum(v for name, v in per_op.items() if name != "client")
        return per_op
