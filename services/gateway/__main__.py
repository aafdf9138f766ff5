"""Run the gateway: `python -m services.gateway` (settings from SEMSEARCH_* env vars)."""

import os

# Before FAISS (used for training) loads libgomp: idle OpenMP threads sleep instead of spinning.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import asyncio
import logging

from semsearch.core.log import setup_logging
from services.gateway.config import GatewaySettings
from services.gateway.server import run


def main() -> None:
    setup_logging()
    try:
        asyncio.run(run(GatewaySettings.from_env()))
    except RuntimeError as exc:  # a configuration error found at start-up, already worded for operators
        logging.getLogger("services.gateway").error("%s", exc)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
