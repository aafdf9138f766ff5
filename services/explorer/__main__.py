"""Run the explorer: `python -m services.explorer` (settings from SEMSEARCH_* env vars)."""

from semsearch.core.log import setup_logging
from services.explorer.config import ExplorerSettings
from services.explorer.server import run


def main() -> None:
    setup_logging()
    run(ExplorerSettings.from_env())


if __name__ == "__main__":
    main()
