"""The indexed metadata fields of a collection's slice, one column per field with a value per slot, so a
filter becomes a boolean mask over the slots in a few numpy passes.

A slot's values never change once written (an upsert takes a new slot), so a search may keep reading
columns of the rows it saw while writes append. String columns are dictionary-coded (int32 codes, -1
= no value); number columns are float64 (NaN = no value)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from semsearch.core.durable import write_file
from semsearch.core.filters import And, Compare, InSet, Node, Not, Or

_OPS = {
    "==": np.equal,
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
}


class StringColumn:
    def __init__(self, codes: np.ndarray | None = None, vocabulary: list[str] | None = None) -> None:
        self.codes = codes if codes is not None else np.full(0, -1, dtype=np.int32)
        self.vocabulary = vocabulary or []
        self.code_of = {value: code for code, value in enumerate(self.vocabulary)}

    def put(self, first: int, values: Sequence[str | None]) -> None:
        for offset, value in enumerate(values):
            if value is None:
                continue
            code = self.code_of.get(value)
            if code is None:
                code = self.code_of[value] = len(self.vocabulary)
                self.vocabulary.append(value)
            self.codes[first + offset] = code

    def grown(self, rows: int) -> None:
        grown = np.full(rows, -1, dtype=np.int32)
        grown[: len(self.codes)] = self.codes
        self.codes = grown

    def taken(self, slots: np.ndarray) -> StringColumn:
        return StringColumn(self.codes[slots], list(self.vocabulary))

    def equal(self, value: str, rows: int) -> np.ndarray:
        code = self.code_of.get(value)
        return self.codes[:rows] == code if code is not None else np.zeros(rows, dtype=bool)

    def isin(self, values: Sequence[str], rows: int) -> np.ndarray:
        codes = [self.code_of[v] for v in values if v in self.code_of]
        return np.isin(self.codes[:rows], codes) if codes else np.zeros(rows, dtype=bool)


class NumberColumn:
    def __init__(self, values: np.ndarray | None = None) -> None:
        self.values = values if values is not None else np.full(0, np.nan)

    def put(self, first: int, values: Sequence[str | None]) -> None:
        for offset, value in enumerate(values):
            if value is not None:
                self.values[first + offset] = float(value)

    def grown(self, rows: int) -> None:
        grown = np.full(rows, np.nan)
        grown[: len(self.values)] = self.values
        self.values = grown

    def taken(self, slots: np.ndarray) -> NumberColumn:
        return NumberColumn(self.values[slots])

    def compare(self, op: str, value: float, rows: int) -> np.ndarray:
        return _OPS[op](self.values[:rows], value)  # NaN (no value) compares False

    def isin(self, values: Sequence[float], rows: int) -> np.ndarray:
        return np.isin(self.values[:rows], np.asarray(values, dtype=np.float64))


Column = StringColumn | NumberColumn


class FieldColumns:
    """The columns of the declared fields (name -> "string" | "number"); not thread-safe for writers:
    the collection's apply lock guards them, like the item table they belong to."""

    def __init__(self, types: dict[str, str], columns: dict[str, Column] | None = None) -> None:
        self.types = dict(types)
        self.columns: dict[str, Column] = columns if columns is not None else {
            name: StringColumn() if kind == "string" else NumberColumn() for name, kind in types.items()
        }  # fmt: skip

    def put(self, first: int, metadata: Sequence[str | None], capacity: int) -> None:
        """Record the fields of items stored at slots first.. (metadata as JSON objects or None); the
        columns hold at least `capacity` slots afterwards."""
        if not self.columns:
            return
        for column in self.columns.values():
            size = len(column.codes if isinstance(column, StringColumn) else column.values)
            if size < capacity:
                column.grown(max(capacity, 2 * size, 1024))
        decoded = [json.loads(m) if m else {} for m in metadata]
        for name, column in self.columns.items():
            column.put(first, [m.get(name) for m in decoded])

    def taken(self, slots: np.ndarray) -> FieldColumns:
        """Columns whose slot i holds what slot slots[i] holds here."""
        return FieldColumns(self.types, {name: c.taken(slots) for name, c in self.columns.items()})

    def mask(self, node: Node, rows: int) -> np.ndarray:
        """Slots [0, rows) whose values satisfy the (checked) filter."""
        if isinstance(node, And):
            out = self.mask(node.parts[0], rows)
            for part in node.parts[1:]:
                out &= self.mask(part, rows)
            return out
        if isinstance(node, Or):
            out = self.mask(node.parts[0], rows)
            for part in node.parts[1:]:
                out |= self.mask(part, rows)
            return out
        if isinstance(node, Not):
            return ~self.mask(node.part, rows)
        column = self.columns[node.field]
        if isinstance(node, InSet):
            found = column.isin(node.values, rows)
            return ~found if node.negated else found
        assert isinstance(node, Compare)
        if node.op in ("==", "!="):
            if isinstance(column, StringColumn):
                equal = column.equal(node.value, rows)
            else:
                equal = column.compare("==", node.value, rows)
            return ~equal if node.op == "!=" else equal
        return column.compare(node.op, node.value, rows)

    # --- snapshot files ---------------------------------------------------------------------------

    def save(self, directory: Path, rows: int) -> None:
        """Write slots [0, rows) of every column (fsync'd files)."""
        vocabularies = {}
        for name, column in self.columns.items():
            data = column.codes if isinstance(column, StringColumn) else column.values
            padded = np.full(rows, -1 if isinstance(column, StringColumn) else np.nan, dtype=data.dtype)
            padded[: min(rows, len(data))] = data[:rows]
            with open(directory / f"field-{name}.npy", "wb") as f:
                np.save(f, padded)
                f.flush()
                os.fsync(f.fileno())
            if isinstance(column, StringColumn):
                vocabularies[name] = column.vocabulary
        write_file(
            directory / "fields.json",
            json.dumps({"types": self.types, "vocabularies": vocabularies}).encode(),
        )

    def copy(self) -> FieldColumns:
        """A copy whose columns do not move under later writes (for writing a snapshot outside the lock)."""
        return FieldColumns(self.types, {
            name: StringColumn(c.codes.copy(), list(c.vocabulary)) if isinstance(c, StringColumn)
            else NumberColumn(c.values.copy())
            for name, c in self.columns.items()
        })  # fmt: skip

    @classmethod
    def load(cls, directory: Path, types: dict[str, str]) -> FieldColumns | None:
        """The columns saved in a snapshot, or None when it holds none for these fields."""
        path = directory / "fields.json"
        if not path.exists():
            return None
        saved = json.loads(path.read_text())
        if saved["types"] != types:
            return None
        columns: dict[str, Column] = {}
        for name, kind in types.items():
            data = np.load(directory / f"field-{name}.npy")
            columns[name] = (
                StringColumn(data, saved["vocabularies"][name]) if kind == "string" else NumberColumn(data)
            )
        return cls(types, columns)
