"""Which item lives in which slot: the id of every slot, the slot of every live id, the live mask, and the
values of the indexed metadata fields per slot (fields.py). (Metadata and payloads live in the payload
store, by id.)"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from semsearch.core.durable import write_file
from services.indexer.fields import FieldColumns


class ItemTable:
    """Slots are row numbers of the raw-vector file. An upsert takes new slots (the old slot of a
    replaced id dies); a delete kills a slot. Not thread-safe: the collection's apply lock guards it."""

    def __init__(self, field_types: dict[str, str] | None = None) -> None:
        self.ids: list[str] = []
        self.slot_of: dict[str, int] = {}
        self._alive = np.zeros(0, dtype=bool)
        self._packed: np.ndarray | None = None
        self.fields = FieldColumns(field_types or {})

    @property
    def rows(self) -> int:
        return len(self.ids)

    @property
    def count(self) -> int:
        """Live items."""
        return len(self.slot_of)

    @property
    def dead(self) -> int:
        return self.rows - self.count

    def alive(self, rows: int | None = None) -> np.ndarray:
        """The live mask of slots [0, rows) (a view: copy it before the table changes)."""
        return self._alive[: self.rows if rows is None else rows]

    def packed(self) -> np.ndarray:
        """The live mask as a little-endian bitmap (FAISS IDSelectorBitmap), cached until a change."""
        if self._packed is None:
            self._packed = np.packbits(self.alive(), bitorder="little")
        return self._packed

    def _grow(self, rows: int) -> None:
        if rows > len(self._alive):
            grown = np.zeros(max(rows, 2 * len(self._alive), 1024), dtype=bool)
            grown[: len(self._alive)] = self._alive
            self._alive = grown

    def add(self, first: int, ids: Sequence[str], metadata: Sequence[str | None] | None = None) -> int:
        """Record items stored at slots first.. first+len(ids) (with their metadata as JSON objects, for
        the indexed fields); returns how many were new ids."""
        assert first == self.rows, (first, self.rows)
        self._grow(first + len(ids))
        if metadata is not None:
            self.fields.put(first, metadata, len(self._alive))
        new = 0
        for offset, item_id in enumerate(ids):
            old = self.slot_of.get(item_id)
            if old is None:
                new += 1
            else:
                self._alive[old] = False
            self.slot_of[item_id] = first + offset
        self.ids.extend(ids)
        self._alive[first : first + len(ids)] = True
        self._packed = None
        return new

    def remove(self, ids: Sequence[str]) -> tuple[int, list[str]]:
        """Kill the slots of `ids`; returns (deleted, ids that were not stored)."""
        deleted, missing = 0, []
        for item_id in dict.fromkeys(ids):
            slot = self.slot_of.pop(item_id, None)
            if slot is None:
                missing.append(item_id)
            else:
                self._alive[slot] = False
                deleted += 1
        if deleted:
            self._packed = None
        return deleted, missing

    def remapped(self, old_slots: np.ndarray) -> ItemTable:
        """A table whose slot i holds what slot old_slots[i] holds here (a compaction's renumbering);
        old slots that died since they were chosen stay dead."""
        table = ItemTable()
        ids = self.ids
        table.fields = self.fields.taken(old_slots)
        table.ids = [ids[s] for s in old_slots.tolist()]
        table._alive = self._alive[old_slots].copy() if len(old_slots) else np.zeros(0, dtype=bool)
        table.slot_of = {item_id: slot for slot, item_id in enumerate(table.ids) if table._alive[slot]}
        return table

    # --- snapshot files ---------------------------------------------------------------------------

    def save(self, directory: Path, rows: int) -> None:
        """Write slots [0, rows) into `directory` (fsync'd files)."""
        write_file(directory / "ids.json", json.dumps(self.ids[:rows]).encode())
        self.fields.save(directory, rows)
        with open(directory / "alive.npy", "wb") as f:
            np.save(f, self._alive[:rows])
            f.flush()
            os.fsync(f.fileno())

    def snapshot_copy(self, rows: int) -> ItemTable:
        """A frozen copy of slots [0, rows), for writing a snapshot outside the lock."""
        table = ItemTable()
        table.ids = self.ids[:rows]
        table._alive = self._alive[:rows].copy()
        table.fields = self.fields.copy()
        return table

    @classmethod
    def load(cls, directory: Path, rows: int, field_types: dict[str, str]) -> ItemTable:
        """The table saved in a snapshot; its `fields` are None when the snapshot holds no columns for
        these fields (the caller rebuilds them from the payload store)."""
        table = cls()
        table.fields = FieldColumns.load(directory, field_types)
        table.ids = json.loads((directory / "ids.json").read_text())
        table._alive = np.load(directory / "alive.npy")
        if not len(table.ids) == len(table._alive) == rows:
            raise RuntimeError(
                f"snapshot {directory} is inconsistent: {len(table.ids)} ids, {len(table._alive)} slots, "
                f"manifest says {rows} rows"
            )
        table.slot_of = {item_id: slot for slot, item_id in enumerate(table.ids) if table._alive[slot]}
        return table
