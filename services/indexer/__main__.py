"""Run one indexer shard: `python -m services.indexer` (settings from SEMSEARCH_* env vars)."""

import os

# libgomp reads this when FAISS loads it: idle OpenMP threads must sleep, not spin, or they steal
# the cores from gRPC and from each other (training under load measured ~9x slower spinning).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# numpy's OpenBLAS (exact scores, re-ranking) runs its own worker threads, which spin between calls:
# with 2 of them a shard burned ~4x the CPU of its searches (7.6 vs 1.7 ms per query, 2 shards on 2
# cores). One thread per process; FAISS is parallel through OpenMP (above).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import asyncio
import logging

from semsearch.core.durable import DirectoryInUse
from semsearch.core.log import setup_logging
from services.indexer.config import ShardSettings
from services.indexer.server import run


def main() -> None:
    setup_logging()
    try:
        asyncio.run(run(ShardSettings.from_env()))
    except DirectoryInUse as exc:
        logging.getLogger("services.indexer").error("%s", exc)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
