"""The local stack as real processes on 127.0.0.1: tritonserver, redis-server, N shards, the gateway, and
optionally the explorer (the web app) and Prometheus."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from semsearch.procs import ManagedProcess, StartupError, free_port, is_bind_error, port_open
from semsearch.rpc import health_serving
from semsearch.tools.launch import ShardProcess
from services.embedder.triton import TritonPorts, TritonServer

log = logging.getLogger(__name__)

BIND_ATTEMPTS = 3
# The gateway's readiness (its health for this service name): enough shards answer.
GATEWAY_SERVICE = "semsearch.v1.Search"
PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


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
    gateway_health: str = ""
    triton_http: str = ""
    supervisor_pid: int = 0
    socket: str = ""
    explorer: str = ""

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
        with_prometheus: bool = False,
        with_explorer: bool = False,
    ) -> None:
        self.home = Path(home).resolve()
        self.model_repository = Path(model_repository)
        self.num_shards = num_shards
        self.fixed_gateway_port = gateway_port
        self.gateway_port = gateway_port or 0
        self.env = env or {}
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
        self.with_explorer = with_explorer
        self.explorer: ManagedProcess | None = None
        self.explorer_port = 0

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
        if not first:
            self.triton.stop()  # a restart: also clears the python backend's shared memory left over
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
        """(Re)start shard i on its address. Every shard learns every shard's address
        (SEMSEARCH_PEERS): shard 0 keeps the collection catalog and coordinates training, the others
        follow its catalog."""
        while len(self.shards) < self.num_shards:
            n = len(self.shards)
            self.shards.append(ShardProcess(n, self.num_shards, self.home / f"shard-{n}", env=dict(self.env)))
        shard = self.shards[i]
        shard.env["SEMSEARCH_PEERS"] = ",".join(s.address for s in self.shards)
        return shard.start()

    def start_shards(self) -> None:
        """Start every shard; shard 0 last, so it knows the final address of every other one."""
        for i in [*range(1, self.num_shards), 0]:
            self.start_shard(i)
        owner = self.shards[0].address
        for shard in self.shards[1:]:
            if not shard.env["SEMSEARCH_PEERS"].startswith(owner + ","):
                # Shard 0 had to take another port than the one the others were told: tell them again.
                shard.stop()
                self.start_shard(shard.shard)

    def start_gateway(self) -> None:
        """Start (or restart, on the same ports) the gateway and wait for its readiness. Ports are
        picked right before the first start, and picked again if another process took one in between
        (a free port can become some connection's ephemeral port at any time)."""
        if self.gateway_metrics_port:
            self._start_gateway_once()
            return
        for attempt in range(BIND_ATTEMPTS):
            self.gateway_port = self.fixed_gateway_port or free_port()
            self.gateway_metrics_port = free_port()
            self.gateway_health_port = free_port() if self.env.get("SEMSEARCH_TLS_CERT") else 0
            try:
                self._start_gateway_once()
                return
            except StartupError as exc:
                if attempt == BIND_ATTEMPTS - 1 or not is_bind_error(exc):
                    raise
                log.warning("gateway could not bind its ports, retrying with others")

    @property
    def gateway_health_address(self) -> str:
        """Where probes ask the gateway's health: its plaintext health-only port under TLS."""
        port = self.gateway_health_port or self.gateway_port
        return f"127.0.0.1:{port}"

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
        if self.gateway_health_port:
            env["SEMSEARCH_GATEWAY_HEALTH_PORT"] = str(self.gateway_health_port)
        env.update(self.env)
        self.gateway = ManagedProcess(
            "gateway", [sys.executable, "-m", "services.gateway"], log_path=self.home / "gateway.log", env=env
        )
        self.gateway.start(lambda: health_serving(self.gateway_health_address, GATEWAY_SERVICE), 120)

    @property
    def explorer_url(self) -> str:
        return f"http://127.0.0.1:{self.explorer_port}"

    def start_explorer(self) -> None:
        """The web app, a client of the gateway like any other (with the stack's first API key)."""
        keys = [k for k in self.env.get("SEMSEARCH_API_KEYS", "").split(",") if k]
        for attempt in range(BIND_ATTEMPTS):
            self.explorer_port = self.explorer_port or free_port()
            env = dict(os.environ)
            env.update(
                SEMSEARCH_GATEWAY=self.gateway_address,
                SEMSEARCH_EXPLORER_HOST="127.0.0.1",
                SEMSEARCH_EXPLORER_PORT=str(self.explorer_port),
                SEMSEARCH_EXPLORER_DATA_DIR=str(self.home / "explorer"),
                SEMSEARCH_LOG_FORMAT="json",
            )
            if keys:
                env["SEMSEARCH_API_KEY"] = keys[0]
            env.update({k: v for k, v in self.env.items() if k.startswith("SEMSEARCH_EXPLORER_")})
            self.explorer = ManagedProcess(
                "explorer",
                [sys.executable, "-m", "services.explorer"],
                log_path=self.home / "explorer.log",
                env=env,
            )
            try:
                self.explorer.start(lambda: _http_ok(f"{self.explorer_url}/healthz"), 60)
                return
            except StartupError as exc:
                if attempt == BIND_ATTEMPTS - 1 or not is_bind_error(exc):
                    raise
                self.explorer_port = 0

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

    def part_names(self) -> list[str]:
        """Every part, in start order (shard 0 last of the shards: it needs every shard's address)."""
        names = ["redis", "triton", *[f"shard-{i}" for i in [*range(1, self.num_shards), 0]], "gateway"]
        if self.with_explorer:
            names.append("explorer")
        return [*names, "prometheus"] if self.with_prometheus else names

    def start_part(self, name: str) -> None:
        """Start (or restart on its address) one part and wait until it is ready."""
        if name == "redis":
            self.start_redis()
        elif name == "triton":
            self.start_triton()
        elif name.startswith("shard-"):
            self.start_shard(int(name.split("-", 1)[1]))
        elif name == "gateway":
            self.start_gateway()
        elif name == "prometheus":
            self.start_prometheus()
        elif name == "explorer":
            self.start_explorer()
        else:
            raise ValueError(f"unknown part {name!r}")

    def _process_of(self, name: str):
        if name.startswith("shard-"):
            i = int(name.split("-", 1)[1])
            return self.shards[i] if i < len(self.shards) else None
        return {"redis": self.redis, "triton": self.triton, "gateway": self.gateway,
                "prometheus": self.prometheus, "explorer": self.explorer}[name]  # fmt: skip

    def part_pid(self, name: str) -> int | None:
        process = self._process_of(name)
        if process is None:
            return None
        return process.process.pid if isinstance(process, ShardProcess) and process.process else process.pid

    def part_returncode(self, name: str) -> int | None:
        """How the part's process ended (negative: killed by that signal); None while it runs."""
        process = self._process_of(name)
        return process.returncode if process is not None else None

    def part_alive(self, name: str) -> bool:
        process = self._process_of(name)
        return process is not None and process.alive()

    def stop_part(self, name: str, grace: float = 20.0) -> None:
        """Stop one part gracefully (SIGTERM: it drains and, for a shard, snapshots; SIGKILL after
        `grace` seconds)."""
        process = self._process_of(name)
        if process is not None:
            process.stop(grace)

    def start(self) -> Stack:
        self.home.mkdir(parents=True, exist_ok=True)
        try:
            for name in self.part_names():
                self.start_part(name)
        except BaseException:
            self.stop()
            raise
        return self

    def state(self) -> StackState:
        pids = {"redis": self.redis.pid, "triton": self.triton.pid, "gateway": self.gateway.pid}
        if self.prometheus is not None:
            pids["prometheus"] = self.prometheus.pid
        if self.explorer is not None:
            pids["explorer"] = self.explorer.pid
        pids.update({f"shard-{i}": s.process.pid for i, s in enumerate(self.shards)})
        return StackState(
            gateway=self.gateway_address,
            gateway_health=self.gateway_health_address,
            triton_http=self.triton.http_url,
            gateway_metrics=self.gateway_metrics_port,
            triton_grpc=self.triton.grpc_url,
            triton_metrics=self.triton.ports.metrics,
            redis_url=self.redis_url,
            shards=[s.address for s in self.shards],
            shard_metrics=[s.metrics_port for s in self.shards],
            triton_shm_prefix=self.triton.shm_prefix,
            prometheus=self.prometheus_url if self.prometheus is not None else "",
            explorer=self.explorer_url if self.explorer is not None else "",
            pids={k: v for k, v in pids.items() if v},
        )

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def stop(self) -> None:
        if self.prometheus:
            self.prometheus.stop()
        if self.explorer:
            self.explorer.stop()
        if self.gateway:
            self.gateway.stop()
        for shard in self.shards:
            shard.stop()
        if self.triton:
            self.triton.stop()
        if self.redis:
            self.redis.stop()


def _tcp(address: str) -> tuple[str, int]:
    host, port = address.split("//")[-1].split("/")[0].rsplit(":", 1)
    return host, int(port)


def status_of(state: StackState, supervisor: dict | None = None) -> list[dict]:
    """Each part of a running stack: state (serving, degraded with why, down), address and, from the
    supervisor, pid and restart count; the gateway's row says which shard coverage it can offer now."""
    parts = (supervisor or {}).get("parts", {})
    rows: list[dict] = []

    def row(name: str, address: str, condition: str, why: str = "", **extra) -> dict:
        info = parts.get(name, {})
        if info.get("restarting"):
            condition, why = "down", "rolling restart in progress"
        entry = {"part": name, "address": address, "state": condition, "why": why,
                 "pid": info.get("pid"), "restarts": info.get("restarts", 0)} | extra  # fmt: skip
        rows.append(entry)
        return entry

    shard_up = []
    for i, address in enumerate(state.shards):
        live = health_serving(address)
        ready = live and health_serving(address, "semsearch.v1.Indexer")
        shard_up.append(live)
        if ready:
            row(f"shard-{i}", address, "serving")
        elif live:
            row(f"shard-{i}", address, "degraded", "not taking writes (see its log) or still loading")
        else:
            row(f"shard-{i}", address, "down", "not answering")
    triton_up = (
        _http_ok(f"{state.triton_http}/v2/health/ready")
        if state.triton_http
        else port_open(*_tcp(state.triton_grpc))
    )
    row("triton", state.triton_grpc, "serving" if triton_up else "down")
    redis_up = port_open(*_tcp(state.redis_url))
    row("redis", state.redis_url, "serving" if redis_up else "down")
    if state.prometheus:
        row("prometheus", state.prometheus, "serving" if port_open(*_tcp(state.prometheus)) else "down")
    if state.explorer:
        if _http_ok(f"{state.explorer}/readyz"):
            row("explorer", state.explorer, "serving")
        elif _http_ok(f"{state.explorer}/healthz"):
            row("explorer", state.explorer, "degraded", "the gateway does not answer it")
        else:
            row("explorer", state.explorer, "down", "not answering")
    health = state.gateway_health or state.gateway
    answered = sum(shard_up)
    coverage = f"{answered}/{len(state.shards)}"
    if not health_serving(health):
        gateway = row("gateway", state.gateway, "down", "not answering", coverage=coverage)
    else:
        why = []
        if answered < len(state.shards):
            missing = ", ".join(str(i) for i, up in enumerate(shard_up) if not up)
            why.append(f"shard {missing} down: searches cover {coverage} shards (min_coverage < 1 to accept)")
        if not triton_up:
            why.append("triton down: text and image queries fail, vector and id queries work")
        if not redis_up:
            why.append("redis down: searches run uncached")
        ready = health_serving(health, GATEWAY_SERVICE)
        condition = "serving" if ready and not why else "degraded" if ready or answered else "down"
        gateway = row("gateway", state.gateway, condition, "; ".join(why), coverage=coverage)
    rows.remove(gateway)
    return [gateway, *rows]


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False
