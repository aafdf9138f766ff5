"""A shard's collection catalog: which collections exist (settings and incarnation), kept durably, with a
version that the owner (shard 0) raises on every change.

Design: shard 0 owns the catalog and serialises every create and drop; each shard keeps a durable copy
and applies newer versions pushed by shard 0 (at once after a change) or pulled from it (at start,
every few seconds, and when asked for a collection it does not know). A collection therefore exists on
every shard or, while one was down, on every shard that answers: a shard that comes back converges
before it serves the new collection. The incarnation (a random id) tells a collection from an older
one of the same name, so a drop-and-create is never mistaken for the same collection."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from semsearch.core.collections import CollectionConfig
from semsearch.core.durable import atomic_write
from semsearch.core.errors import AlreadyExists


@dataclass(frozen=True)
class Entry:
    config: CollectionConfig
    incarnation: str

    @property
    def folder(self) -> str:
        """Where the collection's slice lives under the shard's data directory."""
        return f"collections/{self.config.name}-{self.incarnation}"


@dataclass
class Catalog:
    version: int = 0
    entries: dict[str, Entry] = field(default_factory=dict)

    # --- owner (shard 0) ----------------------------------------------------------------------------

    def create(self, config: CollectionConfig) -> tuple[Entry, bool]:
        """Add a collection; (entry, True) when created, (existing entry, False) when one with the same
        settings exists; AlreadyExists naming the differences when one with other settings does."""
        existing = self.entries.get(config.name)
        if existing is not None:
            differences = config.differences(existing.config)
            if differences:
                raise AlreadyExists(
                    f"collection {config.name!r} exists with other settings: {'; '.join(differences)}"
                )
            return existing, False
        entry = Entry(config, uuid.uuid4().hex[:12])
        self.entries[config.name] = entry
        self.version += 1
        return entry, True

    def drop(self, name: str) -> Entry | None:
        entry = self.entries.pop(name, None)
        if entry is not None:
            self.version += 1
        return entry

    # --- persistence --------------------------------------------------------------------------------

    def to_json(self) -> dict:
        return {
            "version": self.version,
            "collections": [
                {"config": e.config.to_json(), "incarnation": e.incarnation} for e in self.entries.values()
            ],
        }

    @classmethod
    def from_json(cls, data: dict) -> Catalog:
        entries = {}
        for item in data["collections"]:
            config = CollectionConfig.from_json(item["config"])
            entries[config.name] = Entry(config, item["incarnation"])
        return cls(data["version"], entries)

    def save(self, path: Path) -> None:
        atomic_write(path, json.dumps(self.to_json(), indent=1).encode())

    @classmethod
    def load(cls, path: Path) -> Catalog:
        return cls.from_json(json.loads(Path(path).read_text())) if Path(path).exists() else cls()
