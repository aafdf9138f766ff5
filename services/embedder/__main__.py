"""Run the embedder (tritonserver on the exported model repository): `python -m services.embedder`,
settings from SEMSEARCH_* environment variables (services/embedder/config.py)."""

from semsearch.core.log import setup_logging
from services.embedder.config import EmbedderSettings
from services.embedder.server import run


def main() -> None:
    setup_logging()
    run(EmbedderSettings.from_env())


if __name__ == "__main__":
    main()
