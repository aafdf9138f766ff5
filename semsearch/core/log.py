"""Structured logging to stdout, configured once per process."""

from __future__ import annotations

import json
import logging
import os
import sys
import time


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str | None = None, json_format: bool | None = None) -> None:
    """Configure the root logger: JSON lines for services (SEMSEARCH_LOG_FORMAT=json), plain text
    for interactive CLI use. Level from SEMSEARCH_LOG_LEVEL (default INFO)."""
    level = level or os.environ.get("SEMSEARCH_LOG_LEVEL", "INFO")
    if json_format is None:
        json_format = os.environ.get("SEMSEARCH_LOG_FORMAT", "text") == "json"
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        _JsonFormatter()
        if json_format
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
