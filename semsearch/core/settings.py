"""Typed settings from environment variables, read once at start: a missing required variable or a bad
value stops the process with a message naming the variable."""

from __future__ import annotations

import os
from collections.abc import Mapping


class Env:
    """Reads SEMSEARCH_* variables from `environ` (default: the process environment)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ

    def _raw(self, name: str) -> str | None:
        value = self.environ.get(name)
        return None if value is None or value.strip() == "" else value.strip()

    def required(self, *names: str) -> None:
        missing = [n for n in names if self._raw(n) is None]
        if missing:
            raise SystemExit(f"missing required settings: {', '.join(missing)}")

    def str(self, name: str, default: str | None = None) -> str | None:
        value = self._raw(name)
        return default if value is None else value

    def int(self, name: str, default: int, minimum: int | None = None) -> int:
        value = self._raw(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise SystemExit(f"{name}={value!r}: expected an integer") from None
        if minimum is not None and number < minimum:
            raise SystemExit(f"{name}={number}: must be at least {minimum}")
        return number

    def float(self, name: str, default: float, minimum: float | None = None) -> float:
        value = self._raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise SystemExit(f"{name}={value!r}: expected a number") from None
        if minimum is not None and number < minimum:
            raise SystemExit(f"{name}={number}: must be at least {minimum}")
        return number

    def bool(self, name: str, default: bool) -> bool:
        value = self._raw(name)
        if value is None:
            return default
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise SystemExit(f"{name}={value!r}: expected 1/0, true/false, yes/no or on/off")

    def list(self, name: str) -> tuple[str, ...]:
        """Comma-separated values, blanks dropped."""
        value = self._raw(name) or ""
        return tuple(v.strip() for v in value.split(",") if v.strip())
