"""The write-ahead log: round trips, torn tails, corruption, rotation, truncation and group commit."""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from pathlib import Path

import pytest

from services.indexer import wal as wal_module
from services.indexer.wal import HEADER_SIZE, WalCorruption, WriteAheadLog, repair, segment_name

# Three 2-record batches of 50-byte payloads (70-byte records) fill a 200-byte segment twice over: with
# rotation checked before each batch, segments hold 4 records each and start at LSNs 1, 5, 9, ...
SMALL_SEGMENT = 200
PAYLOAD_50 = 50


def opened(directory: Path, **kwargs) -> WriteAheadLog:
    log = WriteAheadLog(directory, **kwargs)
    log.open()
    return log


def payload(i: int, size: int = PAYLOAD_50) -> bytes:
    return f"p{i:05d}".encode().ljust(size, b".")


def segment_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("wal-*.log"))


def fill(log: WriteAheadLog, batches: int, per_batch: int = 2) -> list[bytes]:
    written = []
    for _ in range(batches):
        batch = [payload(len(written) + i) for i in range(per_batch)]
        log.append(batch)
        written.extend(batch)
    return written


def test_round_trip_with_consecutive_lsns(tmp_path):
    log = opened(tmp_path / "wal")
    assert log.last_lsn == 0
    assert list(log.replay()) == []
    batches = [[b"a"], [b"bb", b"", b"ccc"], [bytes(range(256)) * 10]]
    lasts = [log.append(batch) for batch in batches]
    assert lasts == [1, 4, 5]
    assert log.last_lsn == 5
    assert list(log.replay()) == list(enumerate([p for batch in batches for p in batch], start=1))
    assert segment_files(tmp_path / "wal") == [segment_name(1)]
    log.close()


def test_replay_after_lsn(tmp_path):
    log = opened(tmp_path, fsync=False)
    written = fill(log, 5)
    for after in (0, 1, 4, 9, 10, 20):
        assert list(log.replay(after)) == [(lsn, written[lsn - 1]) for lsn in range(after + 1, 11)]
    log.close()


def test_reopen_preserves_records_and_continues_lsns(tmp_path, caplog):
    log = opened(tmp_path)
    written = fill(log, 3)
    log.close()
    log.close()  # idempotent
    with pytest.raises(RuntimeError):
        log.append([b"x"])

    caplog.set_level(logging.WARNING, logger=wal_module.__name__)
    log = opened(tmp_path)
    assert log.last_lsn == 6
    assert [p for _, p in log.replay()] == written
    assert log.append([b"next"]) == 7
    log.close()
    log.open()  # the same object can be reopened
    assert list(log.replay(6)) == [(7, b"next")]
    log.close()
    assert not caplog.records


def _last_record_offset(path: Path) -> int:
    size = path.stat().st_size
    return size - HEADER_SIZE - PAYLOAD_50


@pytest.mark.parametrize("damage", ["mid_header", "mid_payload", "flipped_payload_byte", "garbage_after"])
def test_torn_tail_is_cut_off(tmp_path, caplog, damage):
    log = opened(tmp_path)
    written = fill(log, 3)  # LSNs 1..6, all in one segment
    log.close()
    path = tmp_path / segment_name(1)
    last = _last_record_offset(path)
    data = bytearray(path.read_bytes())
    if damage == "mid_header":
        data = data[: last + HEADER_SIZE // 2]
    elif damage == "mid_payload":
        data = data[: last + HEADER_SIZE + PAYLOAD_50 // 2]
    elif damage == "flipped_payload_byte":
        data[last + HEADER_SIZE + 7] ^= 0x40
    else:
        data += random.Random(7).randbytes(37)
    path.write_bytes(bytes(data))
    survivors = written if damage == "garbage_after" else written[:-1]

    caplog.set_level(logging.WARNING, logger=wal_module.__name__)
    log = opened(tmp_path)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    dropped = 37 if damage == "garbage_after" else len(data) - last
    assert f"dropped {dropped} bytes" in warnings[0].getMessage()
    assert log.last_lsn == len(survivors)
    assert [p for _, p in log.replay()] == survivors

    assert log.append([b"after-1", b"after-2"]) == len(survivors) + 2
    log.close()
    caplog.clear()
    log = opened(tmp_path)
    assert not caplog.records  # the tail was cut for good
    assert list(log.replay()) == list(enumerate([*survivors, b"after-1", b"after-2"], start=1))
    log.close()


def test_torn_first_record_of_last_segment(tmp_path, caplog):
    log = opened(tmp_path, segment_bytes=SMALL_SEGMENT)
    written = fill(log, 3)  # LSNs 1..4 in the first segment, 5..6 in the second
    log.close()
    last_segment = tmp_path / segment_name(5)
    os.truncate(last_segment, 10)

    caplog.set_level(logging.WARNING, logger=wal_module.__name__)
    log = opened(tmp_path, segment_bytes=SMALL_SEGMENT)
    assert len(caplog.records) == 1
    assert log.last_lsn == 4
    assert last_segment.stat().st_size == 0
    assert log.append([b"five"]) == 5  # into the emptied segment, whose name still fits
    assert list(log.replay(3)) == [(4, written[3]), (5, b"five")]
    assert segment_files(tmp_path) == [segment_name(1), segment_name(5)]
    log.close()


def test_damage_in_an_earlier_segment_is_corruption(tmp_path):
    log = opened(tmp_path, segment_bytes=SMALL_SEGMENT, fsync=False)
    fill(log, 4)  # segments at LSNs 1 and 5
    log.close()
    first = tmp_path / segment_name(1)
    data = bytearray(first.read_bytes())
    offset = 2 * (HEADER_SIZE + PAYLOAD_50)  # LSN 3
    data[offset + HEADER_SIZE + 1] ^= 0x01
    first.write_bytes(bytes(data))
    with pytest.raises(WalCorruption, match=rf"{segment_name(1)}: damaged record at offset {offset} [(]CRC"):
        WriteAheadLog(tmp_path).open()


@pytest.mark.parametrize("damage", ["flipped_payload_byte", "lsn_gap"])
def test_damage_in_the_middle_of_the_last_segment_is_corruption_not_a_torn_tail(tmp_path, damage):
    log = opened(tmp_path, fsync=False)
    written = fill(log, 3)  # LSNs 1..6, all in one segment
    log.close()
    path = tmp_path / segment_name(1)
    data = bytearray(path.read_bytes())
    offset = 2 * (HEADER_SIZE + PAYLOAD_50)  # LSN 3, followed by intact LSNs 4..6
    if damage == "flipped_payload_byte":
        data[offset + HEADER_SIZE + 1] ^= 0x01
    else:  # LSN 3 removed: 4 follows 2
        del data[offset : offset + HEADER_SIZE + PAYLOAD_50]
    path.write_bytes(bytes(data))
    with pytest.raises(WalCorruption, match=r"after LSN 2, with intact records after it") as info:
        WriteAheadLog(tmp_path).open()
    assert "repair-log" in str(info.value)
    assert path.read_bytes() == bytes(data)  # nothing was cut

    # The documented recovery cuts the log explicitly, after the operator accepted the loss.
    report = repair(tmp_path, truncate_after=2)
    assert "after LSN 2" in report
    log = opened(tmp_path, fsync=False)
    assert [p for _, p in log.replay()] == written[:2]
    log.close()


def test_missing_segment_is_corruption(tmp_path):
    log = opened(tmp_path, segment_bytes=SMALL_SEGMENT, fsync=False)
    fill(log, 6)  # segments at LSNs 1, 5 and 9
    log.close()
    (tmp_path / segment_name(5)).unlink()
    with pytest.raises(WalCorruption, match="starts at LSN 9"):
        WriteAheadLog(tmp_path).open()


def test_rotation_never_splits_a_batch_and_replay_spans_segments(tmp_path):
    log = opened(tmp_path, segment_bytes=SMALL_SEGMENT)
    written = fill(log, 3)
    written += [payload(100 + i) for i in range(5)]
    assert log.append(written[-5:]) == 11  # one batch, larger than a segment, kept whole
    written += fill(log, 1)
    assert segment_files(tmp_path) == [segment_name(lsn) for lsn in (1, 5, 12)]
    assert list(log.replay()) == list(enumerate(written, start=1))
    assert list(log.replay(6)) == list(enumerate(written[6:], start=7))
    log.close()
    log = opened(tmp_path, segment_bytes=SMALL_SEGMENT)
    assert list(log.replay()) == list(enumerate(written, start=1))
    log.close()


def test_replay_skips_whole_segments_unread(tmp_path):
    log = opened(tmp_path, segment_bytes=SMALL_SEGMENT, fsync=False)
    written = fill(log, 6)  # segments at LSNs 1, 5 and 9
    # Damage the first segment behind the open log's back: only reading it record by record notices.
    first = tmp_path / segment_name(1)
    data = bytearray(first.read_bytes())
    data[HEADER_SIZE + 3] ^= 0xFF
    first.write_bytes(bytes(data))
    assert list(log.replay(4)) == list(enumerate(written[4:], start=5))
    with pytest.raises(WalCorruption):
        list(log.replay(0))
    log.close()


def test_truncate_before(tmp_path, caplog):
    log = opened(tmp_path, segment_bytes=SMALL_SEGMENT)
    written = fill(log, 8)  # segments at LSNs 1, 5, 9 and 13 (13..16, the current one)
    assert log.truncate_before(3) == 0
    assert log.truncate_before(4) == 1
    assert segment_files(tmp_path) == [segment_name(lsn) for lsn in (5, 9, 13)]
    assert log.truncate_before(7) == 0
    assert list(log.replay(7)) == list(enumerate(written[7:], start=8))
    assert log.truncate_before(15) == 2  # 5..8 and 9..12; 13..16 still holds 16
    assert segment_files(tmp_path) == [segment_name(13)]
    assert list(log.replay(14)) == list(enumerate(written[14:], start=15))
    # Everything covered: the current segment is rotated away, an empty one keeps the numbering.
    assert log.truncate_before(100) == 1
    assert segment_files(tmp_path) == [segment_name(17)]
    assert log.truncate_before(100) == 0
    log.close()

    log = opened(tmp_path, segment_bytes=SMALL_SEGMENT)
    assert log.last_lsn == 16
    assert list(log.replay(16)) == []
    assert log.append([b"x"]) == 17
    assert list(log.replay(16)) == [(17, b"x")]
    log.close()


def test_size_bytes_grows(tmp_path):
    log = opened(tmp_path, segment_bytes=SMALL_SEGMENT, fsync=False)
    assert log.size_bytes == 0
    log.append([b"abc"])
    assert log.size_bytes == HEADER_SIZE + 3
    fill(log, 4)
    assert log.size_bytes == HEADER_SIZE + 3 + 8 * (HEADER_SIZE + PAYLOAD_50)
    assert log.size_bytes == sum(p.stat().st_size for p in tmp_path.glob("wal-*.log"))
    log.close()


def test_bad_arguments(tmp_path, monkeypatch):
    log = opened(tmp_path, fsync=False)
    with pytest.raises(ValueError):
        log.append([])
    monkeypatch.setattr(wal_module, "MAX_PAYLOAD_BYTES", 10)
    with pytest.raises(ValueError):
        log.append([b"ok", b"x" * 11])
    assert log.last_lsn == 0
    with pytest.raises(RuntimeError):
        log.open()
    log.close()
    with pytest.raises(ValueError):
        WriteAheadLog(tmp_path, segment_bytes=0)


def test_failed_write_leaves_no_partial_batch(tmp_path, monkeypatch, caplog):
    log = opened(tmp_path)
    log.append([b"one"])
    real_write = os.write

    def half_then_fail(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_fail)
    with pytest.raises(OSError, match="No space"):
        log.append([b"two", b"three"])
    monkeypatch.setattr(os, "write", real_write)
    assert log.append([b"two again"]) == 2
    log.close()
    caplog.set_level(logging.WARNING, logger=wal_module.__name__)
    log = opened(tmp_path)
    assert not caplog.records
    assert list(log.replay()) == [(1, b"one"), (2, b"two again")]
    log.close()


def test_no_fsync_when_disabled(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "fsync", calls.append)
    log = opened(tmp_path, segment_bytes=SMALL_SEGMENT, fsync=False)
    fill(log, 6)
    log.truncate_before(100)
    log.close()
    assert calls == []


@pytest.mark.parametrize("segment_bytes", [64 * 1024 * 1024, 2048], ids=["one_segment", "rotating"])
def test_concurrent_appends_group_commit(tmp_path, monkeypatch, segment_bytes):
    threads, batches = 8, 50
    fsyncs = [0]
    real_fsync = os.fsync

    def slow_fsync(fd):
        fsyncs[0] += 1
        real_fsync(fd)
        time.sleep(0.001)  # a disk-like delay, so that appends pile up behind it

    monkeypatch.setattr(os, "fsync", slow_fsync)
    log = opened(tmp_path, segment_bytes=segment_bytes)
    start = threading.Barrier(threads)
    results: dict[int, list[tuple[int, list[bytes]]]] = {}

    def worker(t: int) -> None:
        mine = results[t] = []
        start.wait()
        for b in range(batches):
            batch = [f"t{t}-b{b}-{i}".encode() for i in range(1 + (t + b) % 3)]
            mine.append((log.append(batch), batch))

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()

    records = list(log.replay())
    total = sum(len(batch) for mine in results.values() for _, batch in mine)
    assert [lsn for lsn, _ in records] == list(range(1, total + 1))
    assert log.last_lsn == total
    by_lsn = dict(records)
    for mine in results.values():
        for last, batch in mine:
            assert [by_lsn[lsn] for lsn in range(last - len(batch) + 1, last + 1)] == batch
    assert len({p for _, p in records}) == total
    # Each batch had its fsync (or rode on another's), yet there were fewer fsyncs than appends.
    assert 1 <= fsyncs[0] < threads * batches
    log.close()
    log = opened(tmp_path, segment_bytes=segment_bytes)
    assert list(log.replay()) == records
    log.close()
    if segment_bytes < 64 * 1024 * 1024:
        assert len(segment_files(tmp_path)) > 3
