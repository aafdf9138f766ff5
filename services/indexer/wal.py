"""Durable write-ahead log for one collection of an index shard: segmented, CRC-checked, group-committed."""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from semsearch.core.durable import fsync_path

log = logging.getLogger(__name__)

MAGIC = 0x4C415753  # b"SWAL" as a little-endian uint32
# magic, payload length, LSN, CRC32 over the 8 LSN bytes + the payload
_HEADER = struct.Struct("<IIQI")
HEADER_SIZE = _HEADER.size
_LSN = struct.Struct("<Q")
MAX_PAYLOAD_BYTES = 1 << 30
_SEGMENT_NAME = re.compile(r"^wal-(\d{20})\.log$")
_READ_BUFFER = 1 << 20


class WalCorruption(RuntimeError):
    """A damaged record that is not at the tail of the log (real corruption, not a torn write)."""


class _BadRecord(Exception):
    """Where and why reading stopped; open() decides whether that is a torn tail or corruption."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"offset {offset}: {reason}")
        self.offset = offset
        self.reason = reason


@dataclass
class _Segment:
    first_lsn: int
    path: Path
    size: int


def segment_name(first_lsn: int) -> str:
    """File name of the segment whose first record has LSN `first_lsn`."""
    return f"wal-{first_lsn:020d}.log"


def _crc(lsn: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(_LSN.pack(lsn)))


def _intact_record_after(path: Path, offset: int, last_good_lsn: int) -> bool:
    """True when a complete record with a valid CRC and a later LSN starts at or after `offset`."""
    data = path.read_bytes()[offset:]
    magic = struct.pack("<I", MAGIC)
    at = data.find(magic)
    while at >= 0:
        if len(data) - at >= HEADER_SIZE:
            _, length, lsn, crc = _HEADER.unpack_from(data, at)
            payload = data[at + HEADER_SIZE : at + HEADER_SIZE + length]
            if lsn > last_good_lsn and len(payload) == length and _crc(lsn, payload) == crc:
                return True
        at = data.find(magic, at + 1)
    return False


def _read_records(
    f: BinaryIO, first_lsn: int, end: int, skip_through: int = 0
) -> Iterator[tuple[int, int, bytes]]:
    """Yield (offset, lsn, payload) for the records of one segment up to byte `end`; raise _BadRecord at
    the first one that is incomplete or fails a check. Records with LSN <= skip_through are seeked over
    unread, so their CRCs are not checked."""
    offset = 0
    lsn = first_lsn
    while offset < end:
        left = end - offset
        header = f.read(HEADER_SIZE) if left >= HEADER_SIZE else b""
        if len(header) < HEADER_SIZE:
            raise _BadRecord(offset, f"incomplete header ({left} bytes left)")
        magic, length, record_lsn, crc = _HEADER.unpack(header)
        if magic != MAGIC:
            raise _BadRecord(offset, f"bad magic {magic:#010x}")
        if length > MAX_PAYLOAD_BYTES:
            raise _BadRecord(offset, f"payload length {length} over the maximum")
        if record_lsn != lsn:
            raise _BadRecord(offset, f"LSN {record_lsn} where {lsn} was expected")
        if left - HEADER_SIZE < length:
            raise _BadRecord(offset, f"incomplete payload ({left - HEADER_SIZE} of {length} bytes)")
        if lsn <= skip_through:
            f.seek(length, os.SEEK_CUR)
        else:
            payload = f.read(length)
            if len(payload) < length:
                raise _BadRecord(offset, f"incomplete payload ({len(payload)} of {length} bytes)")
            if _crc(lsn, payload) != crc:
                raise _BadRecord(offset, "CRC mismatch")
            yield offset, lsn, payload
        offset += HEADER_SIZE + length
        lsn += 1


class WriteAheadLog:
    """Append-only log of opaque payloads numbered by consecutive LSNs, split into segment files.

    append() is thread-safe and durable on return when fsync=True; concurrent appenders share fsyncs.
    replay() and truncate_before() are meant for recovery and snapshotting: do not delete segments
    (truncate_before) while a replay() is still iterating over them.
    """

    def __init__(self, directory: Path, *, segment_bytes: int = 64 * 1024 * 1024, fsync: bool = True) -> None:
        if segment_bytes <= 0:
            raise ValueError(f"segment_bytes must be positive, got {segment_bytes}")
        self._dir = Path(directory)
        self._segment_bytes = segment_bytes
        self._fsync = fsync
        # _lock orders writes, rotation and truncation; _sync_cond only elects the thread that fsyncs
        # and wakes those it covered, so fsyncs never hold up writers.
        self._lock = threading.Lock()
        self._sync_cond = threading.Condition()
        self._segments: list[_Segment] = []
        self._fd: int | None = None
        self._opened = False
        self._broken: str | None = None
        self._last_lsn = 0
        self._synced_lsn = 0
        self._syncing = False

    @property
    def last_lsn(self) -> int:
        """LSN of the last record written (0 for an empty log)."""
        return self._last_lsn

    @property
    def size_bytes(self) -> int:
        """Total bytes of all segment files."""
        with self._lock:
            return sum(seg.size for seg in self._segments)

    def open(self) -> None:
        """Scan the segments, cut a torn tail off the last one and get ready to append after it."""
        with self._lock:
            if self._opened:
                raise RuntimeError(f"write-ahead log {self._dir} is already open")
            if not self._dir.exists():
                self._dir.mkdir(parents=True)
                if self._fsync:
                    fsync_path(self._dir.parent)
            segments = self._list_segments()
            last_lsn = segments[0].first_lsn - 1 if segments else 0
            for i, seg in enumerate(segments):
                if seg.first_lsn != last_lsn + 1:
                    raise WalCorruption(
                        f"{seg.path}: starts at LSN {seg.first_lsn} but the log before it ends at {last_lsn}"
                    )
                last_lsn = self._scan(seg, is_last=i == len(segments) - 1)
            self._segments = segments
            self._last_lsn = self._synced_lsn = last_lsn
            self._broken = None
            self._opened = True
            log.info(
                "opened write-ahead log %s: %d segments, %d bytes, last LSN %d",
                self._dir,
                len(segments),
                sum(seg.size for seg in segments),
                last_lsn,
            )

    def _list_segments(self) -> list[_Segment]:
        segments = []
        for path in self._dir.iterdir():
            match = _SEGMENT_NAME.match(path.name)
            if match and path.is_file():
                segments.append(_Segment(int(match.group(1)), path, path.stat().st_size))
        segments.sort(key=lambda seg: seg.first_lsn)
        return segments

    def _scan(self, seg: _Segment, *, is_last: bool) -> int:
        """Check every record of `seg` and return its last LSN; the last segment also gets its append
        descriptor opened, after its bad tail (if any) is cut off."""
        good_end = 0
        last_lsn = seg.first_lsn - 1
        bad: _BadRecord | None = None
        with open(seg.path, "rb", buffering=_READ_BUFFER) as f:
            try:
                for offset, lsn, payload in _read_records(f, seg.first_lsn, seg.size):
                    good_end = offset + HEADER_SIZE + len(payload)
                    last_lsn = lsn
            except _BadRecord as err:
                bad = err
        if bad is not None and (not is_last or _intact_record_after(seg.path, bad.offset, last_lsn)):
            # A crash can only tear the end of the log; damage with intact records after it (or in an
            # older segment) is corruption, and cutting there would drop acknowledged writes.
            raise WalCorruption(
                f"{seg.path}: damaged record at offset {bad.offset} ({bad.reason}) after LSN {last_lsn}, "
                "with intact records after it. The shard will not start, so that no acknowledged write is "
                "dropped silently. Restore the data directory from a backup, or accept losing every "
                f"record after LSN {last_lsn} with: semsearch indexer repair-log --wal-dir {seg.path.parent} "
                f"--truncate-after {last_lsn}"
            )
        if not is_last:
            return last_lsn
        fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if bad is not None:
                # Only the last batch can have been cut short by a crash, and it was never acknowledged
                # (append returns after the fsync), so dropping it loses nothing a caller relied on.
                log.warning(
                    "%s: dropped %d bytes of torn or corrupt tail at offset %d (%s); last good LSN %d",
                    seg.path,
                    seg.size - good_end,
                    bad.offset,
                    bad.reason,
                    last_lsn,
                )
                os.ftruncate(fd, good_end)
                if self._fsync:
                    os.fsync(fd)
                seg.size = good_end
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return last_lsn

    def _check_writable(self) -> None:
        if not self._opened:
            raise RuntimeError(f"write-ahead log {self._dir} is not open")
        if self._broken is not None:
            raise RuntimeError(f"write-ahead log {self._dir} is unusable until reopened: {self._broken}")

    def append(self, payloads: Sequence[bytes]) -> int:
        """Append one record per payload with consecutive LSNs; durable on return when fsync=True.

        Returns the LSN of the last record appended."""
        return self.sync(self.write(payloads))

    def sync(self, lsn: int) -> int:
        """Return once every record up to `lsn` is durable (concurrent callers share one fsync)."""
        if self._fsync:
            self._sync_through(lsn)
        return lsn

    def write(self, payloads: Sequence[bytes]) -> int:
        """Write one record per payload with consecutive LSNs, not yet durable (see sync()). Returns the
        LSN of the last record written."""
        if not payloads:
            raise ValueError("append needs at least one payload")
        for payload in payloads:
            if memoryview(payload).nbytes > MAX_PAYLOAD_BYTES:
                raise ValueError(f"payload of {memoryview(payload).nbytes} bytes over {MAX_PAYLOAD_BYTES}")
        with self._lock:
            self._check_writable()
            seg = self._segment_for_write()
            first = self._last_lsn + 1
            parts = []
            for lsn, payload in enumerate(payloads, start=first):
                parts.append(_HEADER.pack(MAGIC, memoryview(payload).nbytes, lsn, _crc(lsn, payload)))
                parts.append(payload)
            data = b"".join(parts)
            self._write_all(seg, data)
            seg.size += len(data)
            last = self._last_lsn = first + len(payloads) - 1
        return last

    @property
    def broken(self) -> str | None:
        """Why the log refuses writes until it is reopened (a failed fsync or cleanup), or None."""
        return self._broken

    def _rotate(self) -> None:
        """Start an empty segment for the next LSN (every record so far is covered by a snapshot)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        first = self._last_lsn + 1
        path = self._dir / segment_name(first)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
        self._segments.append(_Segment(first, path, 0))
        if self._fsync:
            fsync_path(self._dir)

    def _segment_for_write(self) -> _Segment:
        """The segment the next batch goes to, rotating first if the current one is full."""
        if self._fd is not None:
            current = self._segments[-1]
            if current.size < self._segment_bytes:
                return current
            # Old segments are never fsynced again, so they must be complete on disk before any
            # record lands in the next one.
            if self._fsync:
                try:
                    os.fsync(self._fd)
                except OSError as err:
                    self._broken = f"fsync failed: {err}"
                    raise
            os.close(self._fd)
            self._fd = None
            with self._sync_cond:
                self._synced_lsn = max(self._synced_lsn, self._last_lsn)
                self._sync_cond.notify_all()
        first = self._last_lsn + 1
        path = self._dir / segment_name(first)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
        seg = _Segment(first, path, 0)
        self._segments.append(seg)
        if self._fsync:
            # Without this a crash can lose the new file's name along with records already acknowledged.
            fsync_path(self._dir)
        log.debug("write-ahead log %s: new segment %s", self._dir, path.name)
        return seg

    def _write_all(self, seg: _Segment, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        written = 0
        try:
            while written < len(data):
                n = os.write(self._fd, view[written:])
                if n <= 0:
                    raise OSError(f"os.write wrote {n} bytes to {seg.path}")
                written += n
        except BaseException:
            # A partial batch left in place would sit in front of every later record, and the next
            # open() would drop them all as a torn tail.
            try:
                os.ftruncate(self._fd, seg.size)
            except OSError as err:
                self._broken = f"could not cut off a partial write: {err}"
            raise

    def _sync_through(self, lsn: int) -> None:
        """Return once every record up to `lsn` is fsynced, by fsyncing or by waiting for the thread
        that is (group commit)."""
        with self._sync_cond:
            while self._syncing and self._synced_lsn < lsn:
                self._sync_cond.wait()
            if self._synced_lsn >= lsn:
                return
            self._syncing = True
        target = 0
        try:
            with self._lock:
                self._check_writable()
                assert self._fd is not None
                target = self._last_lsn
                # A dup, because a rotation may close the segment's own descriptor while we fsync.
                fd = os.dup(self._fd)
            try:
                os.fsync(fd)
            except OSError as err:
                # After a failed fsync the kernel may have dropped the dirty pages, and a retry could
                # report success for data that is gone: refuse all writes until a reopen rescans.
                with self._lock:
                    self._broken = f"fsync failed: {err}"
                target = 0
                raise
            finally:
                os.close(fd)
        finally:
            with self._sync_cond:
                self._syncing = False
                self._synced_lsn = max(self._synced_lsn, target)
                self._sync_cond.notify_all()

    def replay(self, after_lsn: int = 0) -> Iterator[tuple[int, bytes]]:
        """Yield (lsn, payload) for every record with lsn > after_lsn, in order.

        Sees the records written before iteration starts; segments that end at or before after_lsn are
        skipped unread."""
        with self._lock:
            if not self._opened:
                raise RuntimeError(f"write-ahead log {self._dir} is not open")
            segments = [(seg.first_lsn, seg.path, seg.size) for seg in self._segments]
            last_lsn = self._last_lsn
        if segments and after_lsn < segments[0][0] - 1:
            log.warning(
                "write-ahead log %s: replay after LSN %d asked for, but records before LSN %d are deleted",
                self._dir,
                after_lsn,
                segments[0][0],
            )
        for i, (first_lsn, path, size) in enumerate(segments):
            seg_last = segments[i + 1][0] - 1 if i + 1 < len(segments) else last_lsn
            if seg_last <= after_lsn:
                continue
            with open(path, "rb", buffering=_READ_BUFFER) as f:
                try:
                    for _offset, lsn, payload in _read_records(f, first_lsn, size, skip_through=after_lsn):
                        yield lsn, payload
                except _BadRecord as bad:
                    # Everything up to last_lsn passed open()'s checks or was written by us since.
                    raise WalCorruption(f"{path}: bad record at offset {bad.offset}: {bad.reason}") from None

    def truncate_before(self, lsn: int) -> int:
        """Delete the segment files all of whose records have LSN <= lsn; return how many were deleted.
        When `lsn` covers every record, the current segment is rotated first (an empty segment named
        after the next LSN keeps the numbering), so a covered log takes no disk space."""
        with self._lock:
            if not self._opened:
                raise RuntimeError(f"write-ahead log {self._dir} is not open")
            if lsn >= self._last_lsn and self._segments and self._segments[-1].size > 0:
                self._rotate()
            doomed = 0
            try:
                for seg, following in zip(self._segments, self._segments[1:]):
                    if following.first_lsn - 1 > lsn:
                        break
                    # Oldest first, each made durable before the next, so a crash can never leave a gap
                    # (a newer segment gone, an older one still there) that open() would call corruption.
                    seg.path.unlink()
                    doomed += 1
                    if self._fsync:
                        fsync_path(self._dir)
            finally:
                del self._segments[:doomed]
            if doomed:
                log.info("write-ahead log %s: deleted %d segments covered by LSN %d", self._dir, doomed, lsn)
            return doomed

    def close(self) -> None:
        """Close the current segment; idempotent. A closed log can be open()ed again."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._opened = False


def repair(directory: Path, truncate_after: int) -> str:
    """Cut the log after LSN `truncate_after`: the segment holding it is truncated after that record and
    every later segment is deleted. For an operator who accepted losing those records (the shard refuses
    to start on a corrupt log). Returns what was removed."""
    directory = Path(directory)
    segments = sorted(
        (int(m.group(1)), p)
        for p in directory.iterdir()
        if (m := _SEGMENT_NAME.match(p.name)) and p.is_file()
    )
    removed_bytes, removed_segments = 0, 0
    for first_lsn, path in segments:
        size = path.stat().st_size
        if first_lsn > truncate_after:
            path.unlink()
            removed_bytes += size
            removed_segments += 1
            continue
        keep = 0
        with open(path, "rb", buffering=_READ_BUFFER) as f:
            try:
                for offset, lsn, payload in _read_records(f, first_lsn, size):
                    if lsn > truncate_after:
                        break
                    keep = offset + HEADER_SIZE + len(payload)
            except _BadRecord:
                pass
        if keep < size:
            os.truncate(path, keep)
            removed_bytes += size - keep
    fsync_path(directory)
    summary = (
        f"write-ahead log {directory}: removed {removed_bytes} bytes after LSN {truncate_after} "
        f"({removed_segments} whole segments)"
    )
    log.warning("%s", summary)
    return summary
