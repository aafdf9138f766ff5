"""The local stack as real processes on 127.0.0.1: tritonserver, redis-server, N shards, the gateway."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from semsearch.procs import (
    ManagedProcess,
    StartupError,
    free_port,
    is_bind_error,
    port_open,
    stop_process_group,
)
from semsearch.rpc import health_serving
from services.embedder.triton import TritonPorts, TritonServer
from services.indexer.launcher import ShardProcess

log = logging.getLogger(__name__)

BIND_ATTEMPTS = 3
# The gateway's readiness (its health for this service name): enough shards answer.
GATEWAY_SERVICE = "semsearch.v1.Search"
PROMETHEUS_DIR = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"


@dataclass
class StackState:
    """What `semsearch up` started, saved to <home>/stack.json for `status` and `down`."""

    gateway: str
    gateway_metrics: int
    triton_grpc: str
    triton_metrics: int
    redis_url: str
    shards: list[str]
    shard_metrics: list[int]
    triton_shm_prefix: str = ""
    prometheus: str = ""
    pids: dict[str, int] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> StackState | None:
        return cls(**json.loads(path.read_text())) if path.exists() else None


def redis_server_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError(
            "redis-server not found: install the Debian package redis-server (scripts/setup.sh)"
        )
    return binary


class Stack:
    """Starts every part with a readiness deadline; `stop()` stops them in reverse order."""

    def __init__(
        self,
        home: Path,
        model_repository: Path,
        *,
        num_shards: int = 2,
        gateway_port: int | None = None,
        env: dict[str, str] | None = None,
        collections_file: Path | None = None,
        with_prometheus: bool = False,
    ) -> None:
        self.home = Path(home).resolve()
        self.model_repository = Path(model_repository)
        self.num_shards = num_shards
        self.fixed_gateway_port = gateway_port
        self.gateway_port = gateway_port or 0
        self.env = env or {}
        self.collections_file = collections_file
        self.triton: TritonServer | None = None
        self.redis: ManagedProcess | None = None
        self.redis_port = 0
        self.shards: list[ShardProcess] = []
        self.gateway: ManagedProcess | None = None
        self.gateway_metrics_port = 0
        self.gateway_health_port = 0
        self.with_prometheus = with_prometheus
        self.prometheus: ManagedProcess | None = None
        self.prometheus_port = 0

    @property
    def gateway_address(self) -> str:
        return f"127.0.0.1:{self.gateway_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def start_redis(self) -> None:
        first = not self.redis_port
        for attempt in range(BIND_ATTEMPTS):
            self.redis_port = free_port() if first else self.redis_port
            try:
                self._start_redis_once()
                return
            except StartupError as exc:
                if not first or attempt == BIND_ATTEMPTS - 1 or not is_bind_error(exc):
                    raise

    def _start_redis_once(self) -> None:
        self.redis = ManagedProcess(
            "redis-server",
            [
                redis_server_binary(),
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.redis_port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxmemory",
                "256mb",
                "--maxmemory-policy",
                "allkeys-lru",
                "--dir",
                str(self.home),
            ],
            log_path=self.home / "redis.log",
        )
        self.redis.start(lambda: port_open("127.0.0.1", self.redis_port), 30)

    def start_triton(self) -> None:
        first = self.triton is None
        for attempt in range(BIND_ATTEMPTS):
            ports = TritonPorts.free() if first else self.triton.ports
            self.triton = TritonServer(self.model_repository, work_dir=self.home / "triton", ports=ports)
            try:
                self.triton.start()
                return
            except StartupError as exc:
                if not first or attempt == BIND_ATTEMPTS - 1 or not is_bind_error(exc):
                    raise

    def start_shard(self, i: int) -> ShardProcess:
        """(Re)start shard i on its address; shard 0 learns every shard's address (it coordinates
        training), so the others must have started once before it."""
        if i < len(self.shards) and self.shards[i].started_once:
            return self.shards[i].start()
        while len(self.shards) <= i:
            n = len(self.shards)
            shard = ShardProcess(n, self.num_shards, self.home / f"shard-{n}", env=dict(self.env))
            if self.collections_file:
                shard.env["SEMSEARCH_COLLECTIONS_FILE"] = str(self.collections_file)
            self.shards.append(shard)
        if i == 0:
            self.shards[0].env["SEMSEARCH_PEERS"] = ",".join(s.address for s in self.shards)
        return self.shards[i].start()

    def start_shards(self) -> None:
        for i in [*range(1, self.num_shards), 0]:
            self.start_shard(i)

    def start_gateway(self) -> None:
        # Ports are picked right before the start, and picked again if another process took one
        # in between (a free port can become some connection's ephemeral port at any time).
        for attempt in range(BIND_ATTEMPTS):
            self.gateway_port = self.fixed_gateway_port or free_port()
            self.gateway_metrics_port = free_port()
            try:
                self._start_gateway_once()
                return
            except StartupError as exc:
                if attempt == BIND_ATTEMPTS - 1 or not is_bind_error(exc):
                    raise
                log.warning("gateway could not bind its ports, retrying with others")

    def _start_gateway_once(self) -> None:
        env = dict(os.environ)
        env.update(
            SEMSEARCH_SHARDS=",".join(s.address for s in self.shards),
            SEMSEARCH_TRITON_URL=self.triton.grpc_url,
            SEMSEARCH_REDIS_URL=self.redis_url,
            SEMSEARCH_GATEWAY_HOST="127.0.0.1",
            SEMSEARCH_GATEWAY_PORT=str(self.gateway_port),
            SEMSEARCH_GATEWAY_METRICS_PORT=str(self.gateway_metrics_port),
            SEMSEARCH_LOG_FORMAT="json",
            OMP_WAIT_POLICY="PASSIVE",
        )
        if self.collections_file:
            env["SEMSEARCH_COLLECTIONS_FILE"] = str(self.collections_file)
        env.update(self.env)
        health_address = self.gateway_address
        if env.get("SEMSEARCH_TLS_CERT"):
            # Probes of a TLS gateway use its plaintext health-only port.
            self.gateway_health_port = free_port()
            env["SEMSEARCH_GATEWAY_HEALTH_PORT"] = str(self.gateway_health_port)
            health_address = f"127.0.0.1:{self.gateway_health_port}"
        self.gateway = ManagedProcess(
            "gateway", [sys.executable, "-m", "services.gateway"], log_path=self.home / "gateway.log", env=env
        )
        self.gateway.start(lambda: health_serving(health_address, GATEWAY_SERVICE), 120)

    def prometheus_config(self, scrape_interval_s: int = 2) -> dict:
        """The scrape config of deploy/prometheus/prometheus.yml (same job names, same rules file)
        pointed at this stack's local ports. JSON is YAML, so no YAML library is needed."""
        shard_targets = [
            {"targets": [f"127.0.0.1:{s.metrics_port}"], "labels": {"shard": str(i)}}
            for i, s in enumerate(self.shards)
        ]

        def job(name: str, static_configs: list[dict]) -> dict:
            return {"job_name": name, "static_configs": static_configs}

        interval = f"{scrape_interval_s}s"
        return {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(PROMETHEUS_DIR / "rules.yml")],
            "scrape_configs": [
                job("semsearch-gateway", [{"targets": [f"127.0.0.1:{self.gateway_metrics_port}"]}]),
                job("semsearch-indexer", shard_targets),
                job("triton", [{"targets": [f"127.0.0.1:{self.triton.ports.metrics}"]}]),
            ],
        }

    def start_prometheus(self) -> None:
        """A real Prometheus (Debian package `prometheus`) scraping this stack with the alert rules
        of deploy/prometheus, so the dashboard's queries can be checked without containers."""
        binary = shutil.which("prometheus")
        if binary is None:
            raise FileNotFoundError(
                "prometheus not found: install the Debian package prometheus (scripts/setup.sh)"
            )
        config = self.home / "prometheus.yml"
        config.write_text(json.dumps(self.prometheus_config(), indent=2))
        self.prometheus_port = self.prometheus_port or free_port()
        self.prometheus = ManagedProcess(
            "prometheus",
            [binary, f"--config.file={config}", f"--storage.tsdb.path={self.home / 'prometheus-data'}",
             f"--web.listen-address=127.0.0.1:{self.prometheus_port}", "--log.level=warn"],
            log_path=self.home / "prometheus.log",
        )  # fmt: skip
        self.prometheus.start(self._prometheus_ready, 60)

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    def _prometheus_ready(self) -> bool:
        import urllib.request

        with urllib.request.urlopen(f"{self.prometheus_url}/-/ready", timeout=1) as response:
            return response.status == 200

    def start(self) -> Stack:
        self.home.mkdir(parents=True, exist_ok=True)
        try:
            self.start_redis()
            self.start_triton()
            self.start_shards()
            self.start_gateway()
            if self.with_prometheus:
                self.start_prometheus()
        except BaseException:
            self.stop()
            raise
        return self

    def state(self) -> StackState:
        pids = {"redis": self.redis.pid, "triton": self.triton.pid, "gateway": self.gateway.pid}
        if self.prometheus is not None:
            pids["prometheus"] = self.prometheus.pid
        pids.update({f"shard-{i}": s.process.pid for i, s in enumerate(self.shards)})
        return StackState(
            gateway=self.gateway_address,
            gateway_metrics=self.gateway_metrics_port,
            triton_grpc=self.triton.grpc_url,
            triton_metrics=self.triton.ports.metrics,
            redis_url=self.redis_url,
            shards=[s.address for s in self.shards],
            shard_metrics=[s.metrics_port for s in self.shards],
            triton_shm_prefix=self.triton.shm_prefix,
            prometheus=self.prometheus_url if self.prometheus is not None else "",
            pids={k: v for k, v in pids.items() if v},
        )

    def stop(self) -> None:
        if self.prometheus:
            self.prometheus.stop()
        if self.gateway:
            self.gateway.stop()
        for shard in self.shards:
            shard.stop()
        if self.triton:
            self.triton.stop()
        if self.redis:
            self.redis.stop()


def stop_saved(path: Path) -> list[str]:
    """Stop a detached stack recorded in `path` (gateway first); returns what was stopped."""
    state = StackState.load(path)
    if state is None:
        return []
    order = [
        "prometheus",
        "gateway",
        *sorted(k for k in state.pids if k.startswith("shard-")),
        "triton",
        "redis",
    ]
    stopped = []
    for name in order:
        pid = state.pids.get(name)
        if pid:
            stop_process_group(pid, grace=20)
            stopped.append(name)
    for leftover in Path("/dev/shm").glob(f"{state.triton_shm_prefix}*") if state.triton_shm_prefix else []:
        leftover.unlink(missing_ok=True)
    path.unlink()
    return stopped


def status_of(state: StackState) -> list[tuple[str, str, str]]:
    """(part, address, SERVING/down) for every part of a saved stack."""
    rows = [("gateway", state.gateway, "SERVING" if health_serving(state.gateway) else "down")]
    for i, address in enumerate(state.shards):
        rows.append((f"shard {i}", address, "SERVING" if health_serving(address) else "down"))
    host, port = state.triton_grpc.rsplit(":", 1)
    rows.append(("triton", state.triton_grpc, "up" if port_open(host, int(port)) else "down"))
    redis_host, redis_port = state.redis_url.split("//")[1].split("/")[0].split(":")
    rows.append(("redis", state.redis_url, "up" if port_open(redis_host, int(redis_port)) else "down"))
    if state.prometheus:
        prom_port = int(state.prometheus.rsplit(":", 1)[1])
        rows.append(("prometheus", state.prometheus, "up" if port_open("127.0.0.1", prom_port) else "down"))
    return rows
