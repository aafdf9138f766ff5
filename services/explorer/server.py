"""Composition root of the explorer: settings -> gateway client, maps -> web app -> uvicorn."""

from __future__ import annotations

import contextlib
import logging

import uvicorn

from services.explorer.app import Explorer, create_app
from services.explorer.config import ExplorerSettings
from services.explorer.gateway import Gateway
from services.explorer.maps import Maps

log = logging.getLogger(__name__)


def build(settings: ExplorerSettings):
    gateway = Gateway(settings.gateway, settings.api_key, settings.tls_ca)
    maps = Maps(gateway, settings.data_dir, settings.map_points, settings.projection)
    explorer = Explorer(gateway, maps, settings.max_upload_bytes)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        log.info("explorer on http://%s:%d (gateway %s)", settings.host, settings.port, settings.gateway)
        yield
        await maps.close()
        await gateway.close()

    return create_app(explorer, lifespan=lifespan, max_body_bytes=settings.max_upload_bytes + (1 << 20))


def run(settings: ExplorerSettings) -> None:
    """Serve until SIGTERM or SIGINT (uvicorn finishes the requests in flight, then stops)."""
    config = uvicorn.Config(
        build(settings), host=settings.host, port=settings.port, log_config=None, access_log=False,
        timeout_graceful_shutdown=10,
    )  # fmt: skip
    uvicorn.Server(config).run()
