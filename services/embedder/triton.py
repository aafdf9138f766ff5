"""Launch the real Triton Inference Server shipped in the nvidia-pytriton wheel on a model repository."""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import sys
import sysconfig
import tempfile
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from semsearch.procs import ManagedProcess, free_port
from services.embedder.models import CPU_CONFIG_NAME

log = logging.getLogger(__name__)

# Python backend shared memory per instance: one 64-image uint8 batch is 9.6 MB.
SHM_DEFAULT_BYTES = 16 * 1024 * 1024
SHM_GROWTH_BYTES = 16 * 1024 * 1024


def pytriton_dir() -> Path:
    """The `tritonserver` folder inside the installed nvidia-pytriton package."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nvidia-pytriton is not installed: run scripts/setup.sh")
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver"


def prepare_backend_dir(work_dir: Path) -> Path:
    """A --backend-directory whose python/ holds symlinks into the wheel (copies would break the
    relative library paths) and the stub built for this Python version."""
    triton = pytriton_dir()
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = triton / "python_backend_stubs" / python_version / "triton_python_backend_stub"
    if not stub.exists():
        raise RuntimeError(f"nvidia-pytriton has no python backend stub for Python {python_version}")
    backend_dir = Path(work_dir) / "backends"
    python_dir = backend_dir / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    links = {
        "libtriton_python.so": triton / "backends" / "python" / "libtriton_python.so",
        "triton_python_backend_utils.py": triton / "backends" / "python" / "triton_python_backend_utils.py",
        "triton_python_backend_stub": stub,
    }
    for name, target in links.items():
        link = python_dir / name
        if link.is_symlink() or link.exists():
            if link.is_symlink() and Path(os.readlink(link)) == target:
                continue
            link.unlink()
        link.symlink_to(target)
    return backend_dir


def triton_env() -> dict[str, str]:
    """Environment for tritonserver: this Python's libpython first on the library path (else the
    stub loads another patch version's), this venv's bin first on PATH (so models import its
    onnxruntime and numpy)."""
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@dataclass
class TritonPorts:
    http: int
    grpc: int
    metrics: int

    @classmethod
    def free(cls, host: str = "127.0.0.1") -> TritonPorts:
        return cls(free_port(host), free_port(host), free_port(host))


class TritonServer:
    """A tritonserver process serving `model_repository`, bound to `host` on the given ports."""

    def __init__(
        self,
        model_repository: Path,
        *,
        work_dir: Path,
        host: str = "127.0.0.1",
        ports: TritonPorts | None = None,
        config_name: str = CPU_CONFIG_NAME,
        startup_timeout: float = 120.0,
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        self.work_dir = Path(work_dir).resolve()
        self.host = host
        self.ports = ports or TritonPorts.free(host)
        self.config_name = config_name
        self.startup_timeout = startup_timeout
        # Python-backend shared memory regions carry this prefix, so stop() can remove leftovers.
        self.shm_prefix = f"semsearch_{uuid.uuid4().hex[:8]}_"
        self._process: ManagedProcess | None = None

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.ports.grpc}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.ports.http}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports.metrics}/metrics"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def alive(self) -> bool:
        return self._process is not None and self._process.alive()

    @property
    def returncode(self) -> int | None:
        return self._process.returncode if self._process is not None else None

    def argv(self) -> list[str]:
        backend_dir = prepare_backend_dir(self.work_dir)
        return [
            str(pytriton_dir() / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backend_dir}",
            f"--model-config-name={self.config_name}",
            f"--http-address={self.host}",
            f"--http-port={self.ports.http}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.ports.grpc}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.ports.metrics}",
            "--log-info=false",
            "--pinned-memory-pool-byte-size=0",
            "--allow-gpu-metrics=false",
            "--exit-on-error=true",
            "--strict-readiness=true",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            f"--backend-config=python,shm-default-byte-size={SHM_DEFAULT_BYTES}",
            f"--backend-config=python,shm-growth-byte-size={SHM_GROWTH_BYTES}",
        ]

    def ready(self) -> bool:
        """True when Triton's HTTP endpoint reports every model ready."""
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def start(self) -> TritonServer:
        """Start and wait for readiness; on failure everything started is cleaned up."""
        if not (self.model_repository / "manifest.json").exists():
            raise FileNotFoundError(
                f"no model repository at {self.model_repository}: run `semsearch embedder export`"
            )
        self._process = ManagedProcess(
            "tritonserver",
            self.argv(),
            log_path=self.work_dir / "tritonserver.log",
            env=triton_env(),
        )
        try:
            self._process.start(self.ready, self.startup_timeout)
        except BaseException:
            self._cleanup_shm()
            raise
        log.info("tritonserver ready: grpc %s, metrics %s", self.grpc_url, self.metrics_url)
        return self

    def stop(self, grace: float = 10.0) -> None:
        if self._process is not None:
            self._process.stop(grace)
        self._cleanup_shm()

    def kill(self) -> None:
        """SIGKILL the server and its python-backend stubs (failure tests)."""
        if self._process is not None:
            self._process.kill()
        self._cleanup_shm()

    def _cleanup_shm(self) -> None:
        for path in glob.glob(f"/dev/shm/{self.shm_prefix}*"):
            try:
                os.unlink(path)
            except OSError as exc:
                log.warning("could not remove %s: %s", path, exc)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_triton(url: str | None, model_repository: Path) -> Iterator[str]:
    """Yield the gRPC address of a Triton server: `url` when given, else a temporary local server
    on free 127.0.0.1 ports, stopped (with its process group) on exit."""
    if url:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="semsearch-triton-") as work_dir:
        server = TritonServer(model_repository, work_dir=Path(work_dir))
        server.start()
        try:
            yield server.grpc_url
        finally:
            server.stop()
