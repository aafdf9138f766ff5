"""Run the gateway: `python -m services.gateway` (settings from SEMSEARCH_* env vars)."""

import os

# Before FAISS (used for training) loads libgomp: idle OpenMP threads sleep instead of spinning.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import asyncio

from semsearch.log import setup_logging
from services.gateway.config import GatewaySettings
from services.gateway.server import run


def main() -> None:
    setup_logging()
    asyncio.run(run(GatewaySettings.from_env()))


if __name__ == "__main__":
    main()
