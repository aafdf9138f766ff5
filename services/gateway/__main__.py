"""Run the gateway: `python -m services.gateway` (settings from SEMSEARCH_* env vars)."""

import os

# Before FAISS (used for training) loads libgomp: idle OpenMP threads sleep instead of spinning.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# numpy's OpenBLAS (exact scores, re-ranking) runs its own worker threads, which spin between calls:
# with 2 of them a shard burned ~4x the CPU of its searches (7.6 vs 1.7 ms per query, 2 shards on 2
# cores). One thread per process; FAISS is parallel through OpenMP (above).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import asyncio
import logging

from semsearch.core.log import setup_logging
from services.gateway.config import GatewaySettings
from services.gateway.server import run
from services.gateway.workers import supervise, worker_index


def main() -> None:
    setup_logging()
    try:
        settings = GatewaySettings.from_env()
        if settings.workers > 1 and worker_index() is None:
            raise SystemExit(supervise(settings))
        asyncio.run(run(settings))
    except RuntimeError as exc:  # a configuration error found at start-up, already worded for operators
        logging.getLogger("services.gateway").error("%s", exc)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
