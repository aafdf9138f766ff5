"""Settings of the explorer, read from the environment once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from semsearch.core.settings import Env


@dataclass(frozen=True)
class ExplorerSettings:
    # The gateway it talks to (gRPC), as any client app: with an API key and the gateway's CA when
    # the gateway requires them.
    gateway: str
    api_key: str | None = None
    tls_ca: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    # Where computed maps are kept across restarts.
    data_dir: Path = Path("var/explorer")
    # Items sampled for a collection's map, and how it is laid out ("umap", or "pca": instant, cruder).
    map_points: int = 50_000
    projection: str = "umap"
    # The largest image upload accepted.
    max_upload_bytes: int = 32 << 20

    @classmethod
    def from_env(cls, environ=None) -> ExplorerSettings:
        env = Env(environ)
        env.required("SEMSEARCH_GATEWAY")
        projection = env.str("SEMSEARCH_EXPLORER_PROJECTION", "umap")
        if projection not in ("umap", "pca"):
            raise SystemExit(f"SEMSEARCH_EXPLORER_PROJECTION={projection!r}: use umap or pca")
        return cls(
            gateway=env.str("SEMSEARCH_GATEWAY"),
            api_key=env.str("SEMSEARCH_API_KEY") or None,
            tls_ca=env.str("SEMSEARCH_TLS_CA") or None,
            host=env.str("SEMSEARCH_EXPLORER_HOST", "127.0.0.1"),
            port=env.int("SEMSEARCH_EXPLORER_PORT", 8080, minimum=0),
            data_dir=Path(env.str("SEMSEARCH_EXPLORER_DATA_DIR", "var/explorer")),
            map_points=env.int("SEMSEARCH_EXPLORER_MAP_POINTS", 50_000, minimum=100),
            projection=projection,
            max_upload_bytes=env.int("SEMSEARCH_EXPLORER_MAX_UPLOAD_BYTES", 32 << 20, minimum=1024),
        )
