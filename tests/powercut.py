"""A power cut for crash tests: a passthrough FUSE filesystem that remembers what is durable.

Killing a process (SIGKILL) keeps everything it wrote: the kernel's page cache survives. A power cut
does not: only what was made durable survives. PowerCutFS mounts a FUSE filesystem (mfusepy over
libfuse2, served by a subprocess) over a backing folder. Every operation goes to the backing ("live")
files at once, so the program under test sees an ordinary filesystem: reads see writes, mmap works
(no direct_io), rename replaces atomically. Next to that it keeps the DURABLE state, and cut(into)
writes that state into a fresh folder: what a disk would hold after a power cut at that moment.

The model (strict POSIX, as a filesystem owes it to a program that fsyncs):
- File contents: a file's durable content is its content as of its last fsync or fdatasync (the FUSE
  fsync op; O_SYNC and O_DSYNC writes count as fsync'd). Writes after it are lost at the cut. A file
  never fsync'd has empty durable content.
- Directory entries: a directory's durable entries are its entries as of its last fsync (the FUSE
  fsyncdir op). Creating, renaming or deleting a name is lost at the cut until the directory holding
  it is fsync'd; fsyncing a file does not make its name durable, and fsyncing a directory does not
  make its subdirectories' entries durable. A rename within one directory is atomic; across two it
  is two changes (the old parent loses the name, the new one gains it), each durable with its own
  directory's fsync, so after a cut the object can have both names (materialised as two copies),
  either or none.
- Identity: files and directories have stable ids that follow renames, so renaming a directory moves
  its whole subtree (with its durable state) and fsyncing a directory records which object each name
  refers to. A durable name whose object was deleted or replaced since still refers to that object
  and gets its durable content (a file unlinked while open keeps its durable content too). A durable
  name whose content was never fsync'd is an empty file after the cut.
- Files and directories that exist in the backing folder at mount time are durable as they are.
- mmap: writes through a shared mapping reach the filesystem as FUSE writes when the kernel writes
  the dirty pages back (msync, fsync, or writeback at any time) and become durable with the file's
  next fsync, like any write. On Linux msync(MS_SYNC) is itself an fsync of the file (the kernel
  sends the FUSE fsync op), as on a real filesystem. Pages still dirty at the cut are lost.
- fallocate: space reservation (mode 0, posix_fallocate) is passed through; it grows the size (with
  zeros) but, like any change, is durable only after the next fsync.

Not modelled (a test passing here can still lose data on a real disk through these):
- Partial survival and reordering: between two fsyncs a real disk may keep any subset of what was
  written, in any order, even parts of a single write (a torn log tail, a later write kept while an
  earlier one is lost, a new name with stale content). The cut always takes the all-or-nothing
  outcome: everything since the last fsync is lost, nothing else. Recovery from torn tails needs
  its own tests (e.g. appending garbage to the log after a SIGKILL).
- Partial sector writes, torn pages and bit rot; checksums are never exercised by the cut.
- A disk or controller that lies about fsync (volatile write caches without flush, some VMs).
- The more lenient ordering of real filesystems: ext4 (data=ordered) commits a new name with the
  next journal commit (any fsync on the filesystem, or within seconds) and often keeps un-fsync'd
  data. The model is stricter than ext4: a failure here is a missing fsync by POSIX rules, which
  ext4 may hide but other filesystems (or ext4 in a less lucky moment) need.
- Metadata other than names, sizes and contents: modes, owners and times are not kept (files in
  the cut get default modes and the time of the cut); hard links, symlinks, xattrs and special
  files are not supported (ENOSYS).

Usage (root and /dev/fuse needed)::

    with PowerCutFS(backing, mountpoint) as fs:
        ...  # run the program under test on `mountpoint`, kill it
        report = fs.cut(into)  # `into` now holds what a power cut would have left
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import errno
import functools
import json
import logging
import os
import queue
import reprlib
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

ROOT = 0
_COPY_CHUNK = 1 << 20
_REPORT_LIMIT = 200  # paths listed per category in a cut report
_MNT_DETACH = 2
_LINGER_S = 2.0  # how long the server serves a detached but busy mount


# --- the durable-state model (runs in the FUSE server process) ---------------------------------------


@dataclass
class _Node:
    """A file or directory, under a stable id that follows renames."""

    is_dir: bool
    # Directories: live entries, and the entries as of the last fsyncdir (name -> node id).
    children: dict[str, int] = field(default_factory=dict)
    durable_children: dict[str, int] = field(default_factory=dict)
    # Files: the shadow file holds the content as of the last fsync (durable_size bytes). Since then,
    # bytes [dirty_lo, dirty_hi) may have been written (one bounding range: extra bytes in it are
    # unchanged and copying them is harmless), and the size went as low as min_size.
    durable_size: int = 0
    dirty_lo: int = 0
    dirty_hi: int = 0
    min_size: int = 0

    def mark_written(self, begin: int, end: int) -> None:
        if self.dirty_lo >= self.dirty_hi:
            self.dirty_lo, self.dirty_hi = begin, end
        else:
            self.dirty_lo, self.dirty_hi = min(self.dirty_lo, begin), max(self.dirty_hi, end)

    def mark_truncated(self, length: int) -> None:
        self.min_size = min(self.min_size, length)


@dataclass
class _Handle:
    fd: int  # on the backing file, always O_RDWR so fsync can read what it copies
    node: int
    sync: bool  # opened O_SYNC / O_DSYNC: every write is fsync'd


def _internal(method):
    """Run a FUSE op; unexpected exceptions (harness bugs, not errno results) are recorded, logged and
    answered with EIO, so a test can fail on them instead of seeing odd errors."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except OSError:
            raise
        except Exception as exc:
            text = f"{method.__name__}{reprlib.repr(args)}: {traceback.format_exc()}"
            log.error("internal error in %s", text)
            self.internal_errors.append(text)
            raise OSError(errno.EIO, f"powercut internal error: {exc}") from exc

    return wrapper


class PowerCutOperations:
    """The FUSE operations (mfusepy's Operations interface) over `backing`, with the durable state.

    One lock guards the namespace and the durable state; I/O on file data also runs under it (except
    reads), so an fsync copies a consistent range. Plenty for tests, not for speed.

    mfusepy registers every attribute named like a FUSE op (lock, flush, ...) as that op: other
    attributes must not use those names."""

    use_ns = True  # utimens and getattr times in integer nanoseconds
    flag_nullpath_ok = True  # ops on an open file that was unlinked get path None (we use fh)

    def __init__(self, backing: Path, shadow: Path) -> None:
        self.backing = Path(backing).resolve()
        self.shadow = Path(shadow)
        self.shadow.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self.nodes: dict[int, _Node] = {}
        self.handles: dict[int, _Handle] = {}
        self.dir_handles: dict[int, int] = {}
        self._next_id = 0
        self._next_dir_handle = 1 << 32  # never equal to a file handle (a backing fd)
        self.internal_errors: list[str] = []
        self.on_ready: Any = None
        self._adopt(self.backing, is_root=True)

    # --- bookkeeping ---------------------------------------------------------------------------

    def _new_node(self, is_dir: bool) -> int:
        nid = self._next_id
        self._next_id += 1
        self.nodes[nid] = _Node(is_dir)
        return nid

    def _shadow_path(self, nid: int) -> Path:
        return self.shadow / f"{nid}"

    def _adopt(self, path: Path, is_root: bool = False) -> int:
        """Register what exists at mount time as durable, recursively."""
        st = path.lstat()
        if path.is_dir() and not path.is_symlink():
            nid = self._new_node(True)
            for entry in sorted(os.listdir(path)):
                child = self._adopt(path / entry)
                self.nodes[nid].children[entry] = child
            self.nodes[nid].durable_children = dict(self.nodes[nid].children)
            assert not is_root or nid == ROOT
            return nid
        if not path.is_file() or path.is_symlink():
            raise RuntimeError(f"{path}: only regular files and directories are supported")
        nid = self._new_node(False)
        shutil.copyfile(path, self._shadow_path(nid))
        node = self.nodes[nid]
        node.durable_size = node.min_size = st.st_size
        return nid

    def _real(self, path: str) -> str:
        return str(self.backing / path.lstrip("/"))

    def _lookup(self, path: str) -> int:
        nid = ROOT
        for part in path.strip("/").split("/"):
            if not part:
                continue
            node = self.nodes[nid]
            if not node.is_dir:
                raise OSError(errno.ENOTDIR, path)
            if part not in node.children:
                raise OSError(errno.ENOENT, path)
            nid = node.children[part]
        return nid

    def _parent(self, path: str) -> tuple[_Node, str]:
        head, _, name = path.rstrip("/").rpartition("/")
        node = self.nodes[self._lookup(head or "/")]
        if not node.is_dir:
            raise OSError(errno.ENOTDIR, path)
        return node, name

    def _file_node(self, path: str | None, fh: int | None) -> tuple[int, int | None]:
        """(node id, backing fd or None) of a file given by handle or path."""
        if fh is not None and fh in self.handles:
            handle = self.handles[fh]
            return handle.node, handle.fd
        if path is None:
            raise OSError(errno.EBADF, "no path and no handle")
        return self._lookup(path), None

    def _dir_node(self, path: str | None, fh: int) -> int:
        if fh in self.dir_handles:
            return self.dir_handles[fh]
        if path is None:
            raise OSError(errno.EBADF, "no path and no directory handle")
        return self._lookup(path)

    # --- the power cut ----------------------------------------------------------------------------

    def _sync_file(self, nid: int, fd: int) -> None:
        """fsync: the shadow becomes the live content (copying only what may have changed)."""
        node = self.nodes[nid]
        size = os.fstat(fd).st_size
        shadow = os.open(self._shadow_path(nid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            # Bytes past min_size that were not written since were cut off and re-grown: zeros in the
            # live file, zeros here after shrinking to min_size and growing to size.
            os.ftruncate(shadow, min(node.min_size, node.durable_size))
            os.ftruncate(shadow, size)
            offset, end = node.dirty_lo, min(node.dirty_hi, size)
            while offset < end:
                data = os.pread(fd, min(_COPY_CHUNK, end - offset), offset)
                if not data:
                    break
                os.pwrite(shadow, data, offset)
                offset += len(data)
        finally:
            os.close(shadow)
        node.durable_size = node.min_size = size
        node.dirty_lo = node.dirty_hi = 0

    def cut(self, into: Path) -> dict:
        """Write the durable state into the fresh folder `into`; returns a report comparing it with
        the live state (paths only live, only durable, or with a different size)."""
        into = Path(into)
        with self._lock:
            into.mkdir(parents=True, exist_ok=True)
            if any(into.iterdir()):
                raise FileExistsError(f"{into} is not empty")
            durable: dict[str, int] = {}
            self._materialise(ROOT, into, "", frozenset([ROOT]), durable)
            live: dict[str, int] = {}
            self._walk_live(ROOT, "", live)
            sizes = {}
            for path, nid in live.items():
                if not self.nodes[nid].is_dir:
                    with contextlib.suppress(OSError):
                        sizes[path] = os.lstat(self._real(path)).st_size
            stale = sorted(
                f"{p} (durable {self.nodes[n].durable_size}, live {sizes[p]} bytes)"
                for p, n in durable.items()
                if p in sizes and live.get(p) == n and self.nodes[n].durable_size != sizes[p]
            )
            return {
                "durable_paths": len(durable),
                "live_paths": len(live),
                "only_live": sorted(p for p in live if durable.get(p) != live[p])[:_REPORT_LIMIT],
                "only_durable": sorted(p for p in durable if live.get(p) != durable[p])[:_REPORT_LIMIT],
                "stale": stale[:_REPORT_LIMIT],
                "internal_errors": list(self.internal_errors),
            }

    def _materialise(self, nid: int, target: Path, prefix: str, ancestors: frozenset, out: dict) -> None:
        for name, child_id in sorted(self.nodes[nid].durable_children.items()):
            child = self.nodes[child_id]
            path = target / name
            if child.is_dir:
                if child_id in ancestors:
                    continue  # stale entries forming a loop: no disk can hold that, drop it
                path.mkdir()
                out[f"{prefix}/{name}"] = child_id
                self._materialise(child_id, path, f"{prefix}/{name}", ancestors | {child_id}, out)
            else:
                out[f"{prefix}/{name}"] = child_id
                shadow = self._shadow_path(child_id)
                if shadow.exists():
                    shutil.copyfile(shadow, path)
                else:
                    path.touch()  # a durable name whose content was never fsync'd
                assert path.stat().st_size == child.durable_size, (path, child.durable_size)

    def _walk_live(self, nid: int, prefix: str, out: dict) -> None:
        for name, child_id in self.nodes[nid].children.items():
            out[f"{prefix}/{name}"] = child_id
            if self.nodes[child_id].is_dir:
                self._walk_live(child_id, f"{prefix}/{name}", out)

    # --- FUSE operations: metadata ----------------------------------------------------------------

    def init(self, path: str) -> None:
        if self.on_ready is not None:
            self.on_ready()

    def destroy(self, path: str) -> None:
        pass

    @_internal
    def getattr(self, path: str | None, fh: int | None = None) -> dict:
        with self._lock:
            handle = self.handles.get(fh) if fh is not None else None
            if handle is None and path is None:
                raise OSError(errno.EBADF, "no path and no handle")
            st = os.fstat(handle.fd) if handle is not None else os.lstat(self._real(path))
        keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks", "st_blksize")
        attrs = {key: getattr(st, key) for key in keys}
        attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        return attrs

    @_internal
    def access(self, path: str, amode: int) -> int:
        if not os.access(self._real(path), amode):
            raise OSError(errno.EACCES, path)
        return 0

    @_internal
    def statfs(self, path: str) -> dict:
        sv = os.statvfs(self.backing)
        keys = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree")
        return {key: getattr(sv, key) for key in (*keys, "f_favail", "f_flag", "f_namemax")}

    @_internal
    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._real(path), mode)
        return 0

    @_internal
    def chown(self, path: str, uid: int, gid: int) -> int:
        os.chown(self._real(path), uid, gid)
        return 0

    @_internal
    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        if times is None:
            os.utime(self._real(path))
        else:
            os.utime(self._real(path), ns=times)
        return 0

    # --- namespace ------------------------------------------------------------------------------

    @_internal
    def opendir(self, path: str) -> int:
        with self._lock:
            nid = self._lookup(path)
            if not self.nodes[nid].is_dir:
                raise OSError(errno.ENOTDIR, path)
            handle = self._next_dir_handle
            self._next_dir_handle += 1
            self.dir_handles[handle] = nid
            return handle

    @_internal
    def readdir(self, path: str | None, fh: int) -> list[str]:
        with self._lock:
            return [".", "..", *self.nodes[self._dir_node(path, fh)].children]

    @_internal
    def releasedir(self, path: str | None, fh: int) -> int:
        with self._lock:
            self.dir_handles.pop(fh, None)
        return 0

    @_internal
    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        with self._lock:
            node = self.nodes[self._dir_node(path, fh)]
            node.durable_children = dict(node.children)
        return 0

    @_internal
    def mkdir(self, path: str, mode: int) -> int:
        with self._lock:
            parent, name = self._parent(path)
            os.mkdir(self._real(path), mode)
            parent.children[name] = self._new_node(True)
        return 0

    @_internal
    def rmdir(self, path: str) -> int:
        with self._lock:
            parent, name = self._parent(path)
            os.rmdir(self._real(path))
            parent.children.pop(name, None)
        return 0

    @_internal
    def unlink(self, path: str) -> int:
        with self._lock:
            parent, name = self._parent(path)
            os.unlink(self._real(path))
            parent.children.pop(name, None)  # the node lives on: open handles, durable names
        return 0

    @_internal
    def rename(self, old: str, new: str) -> int:
        with self._lock:
            old_parent, old_name = self._parent(old)
            new_parent, new_name = self._parent(new)
            os.rename(self._real(old), self._real(new))  # checks (ENOTEMPTY, EISDIR...) come first
            # A replaced target drops out of the live namespace only; durable names keep it.
            new_parent.children[new_name] = old_parent.children.pop(old_name)
        return 0

    # --- file data ------------------------------------------------------------------------------

    def _open_backing(self, path: str, flags: int, mode: int = 0o644) -> tuple[int, bool]:
        # O_RDWR always (fsync copies from this fd); the kernel computes O_APPEND offsets itself;
        # O_DIRECT would impose alignment; O_SYNC is modelled, the backing disk needs none of it.
        dropped = os.O_ACCMODE | os.O_APPEND | os.O_DIRECT | os.O_SYNC | os.O_DSYNC
        fd = os.open(self._real(path), (flags & ~dropped) | os.O_RDWR | os.O_CLOEXEC, mode)
        return fd, bool(flags & (os.O_SYNC | os.O_DSYNC))

    @_internal
    def open(self, path: str, flags: int) -> int:
        with self._lock:
            nid = self._lookup(path)
            if self.nodes[nid].is_dir:
                raise OSError(errno.EISDIR, path)
            fd, sync = self._open_backing(path, flags)
            if flags & os.O_TRUNC:
                self.nodes[nid].mark_truncated(0)
            self.handles[fd] = _Handle(fd, nid, sync)
            return fd

    @_internal
    def create(self, path: str, mode: int, flags: int) -> int:
        with self._lock:
            parent, name = self._parent(path)
            fd, sync = self._open_backing(path, flags | os.O_CREAT, mode)
            nid = parent.children.get(name)
            if nid is None:
                nid = parent.children[name] = self._new_node(False)
            elif flags & os.O_TRUNC:
                self.nodes[nid].mark_truncated(0)
            self.handles[fd] = _Handle(fd, nid, sync)
            return fd

    @_internal
    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        return os.pread(self.handles[fh].fd, size, offset)

    @_internal
    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        with self._lock:
            handle = self.handles[fh]
            written = os.pwrite(handle.fd, data, offset)
            self.nodes[handle.node].mark_written(offset, offset + written)
            if handle.sync:
                self._sync_file(handle.node, handle.fd)
            return written

    @_internal
    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        with self._lock:
            nid, fd = self._file_node(path, fh)
            if fd is not None:
                os.ftruncate(fd, length)
            else:
                os.truncate(self._real(path), length)
            self.nodes[nid].mark_truncated(length)
        return 0

    @_internal
    def fallocate(self, path: str | None, mode: int, offset: int, size: int, fh: int) -> int:
        if mode != 0:  # only plain reservation (posix_fallocate); no punching, no KEEP_SIZE
            raise OSError(errno.EOPNOTSUPP, "fallocate mode")
        with self._lock:
            # New bytes are zeros and the size is read at fsync: nothing to mark.
            os.posix_fallocate(self.handles[fh].fd, offset, size)
        return 0

    @_internal
    def flush(self, path: str | None, fh: int) -> int:
        return 0  # close() makes nothing durable

    @_internal
    def release(self, path: str | None, fh: int) -> int:
        with self._lock:
            handle = self.handles.pop(fh, None)
            if handle is not None:
                os.close(handle.fd)
        return 0

    @_internal
    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        with self._lock:
            handle = self.handles[fh]
            self._sync_file(handle.node, handle.fd)
        return 0


# --- the server process ----------------------------------------------------------------------------


def _detach(mountpoint: Path) -> None:
    """Lazily unmount (the kernel detaches it now and ends the FUSE session when it is unused)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.umount2(os.fsencode(str(mountpoint)), _MNT_DETACH) == 0:
        return
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOENT):  # not mounted (any more)
        return
    for tool in (["fusermount", "-u", "-z"], ["umount", "-l"]):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            if subprocess.run([*tool, str(mountpoint)], capture_output=True, timeout=10).returncode == 0:
                return
    log.warning("could not unmount %s: %s", mountpoint, os.strerror(err))


def _serve(backing: Path, mountpoint: Path, shadow: Path, control: IO[str]) -> None:
    """Mount and serve until unmounted; answer control requests (JSON lines on stdin, replies on
    `control`). EOF on stdin (the test process is gone) unmounts."""
    from mfusepy import FUSE  # only the server needs libfuse

    ops = PowerCutOperations(backing, shadow)
    write_lock = threading.Lock()

    def reply(message: dict) -> None:
        with write_lock:
            control.write(json.dumps(message) + "\n")
            control.flush()

    ops.on_ready = lambda: reply({"event": "ready"})

    def control_loop() -> None:
        for line in sys.stdin:
            request = json.loads(line)
            try:
                if request["op"] == "cut":
                    reply({"ok": True, "result": ops.cut(Path(request["into"]))})
                elif request["op"] == "quit":
                    break
                else:
                    raise ValueError(f"unknown request {request!r}")
            except Exception:
                reply({"ok": False, "error": traceback.format_exc()})
        _detach(mountpoint)
        # The FUSE loop ends once nothing uses the detached mount any more. A process still holding a
        # file there (a test that failed early) would keep it going: leave anyway, which aborts the
        # session (its calls fail with ENOTCONN), as the test is over.
        time.sleep(_LINGER_S)
        os._exit(0)

    threading.Thread(target=control_loop, name="control", daemon=True).start()
    FUSE(
        ops,
        str(mountpoint),
        foreground=True,
        fsname="powercut",
        big_writes=True,  # writes of up to 128 KiB per request (libfuse2 default: 4 KiB)
        hard_remove=True,  # unlink for real, not rename to .fuse_hidden* while open
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backing", type=Path)
    parser.add_argument("mountpoint", type=Path)
    parser.add_argument("shadow", type=Path, help="where durable contents are kept (not on the mount)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # stdout is the control channel: keep print()s and library output off it.
    control = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    _serve(args.backing, args.mountpoint, args.shadow, control)


# --- the test-side API -----------------------------------------------------------------------------


def _mounted(mountpoint: Path) -> bool:
    """True while `mountpoint` is in the mount table (also when its FUSE server is dead, where
    os.path.ismount() says False)."""
    target = str(Path(mountpoint).resolve())
    escaped = target.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011")
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == escaped for line in f if len(line.split()) > 1)


class PowerCutFS:
    """Mount a power-cut filesystem over `backing` at `mountpoint`, served by a subprocess (its FUSE
    loop must keep serving whatever the test's own threads do). Its log goes to `log_path`.

    Use as a context manager, or mount() ... unmount() (unmount is idempotent, never hangs, and also
    cleans up after a crash of the server)."""

    def __init__(
        self, backing: Path, mountpoint: Path, *, log_path: Path | None = None, timeout: float = 30.0
    ) -> None:
        self.backing = Path(backing)
        self.mountpoint = Path(mountpoint)
        self.shadow = self.backing.parent / f".{self.backing.name}.durable"
        self.log_path = Path(log_path) if log_path else self.backing.parent / f"{self.backing.name}.fuse.log"
        self.timeout = timeout
        self._process: subprocess.Popen | None = None
        self._replies: queue.Queue[str | None] = queue.Queue()

    def __enter__(self) -> PowerCutFS:
        return self.mount()

    def __exit__(self, *exc_info) -> None:
        self.unmount()

    def mount(self) -> PowerCutFS:
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.shadow, ignore_errors=True)
        with open(self.log_path, "ab") as log_file:
            self._process = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), str(self.backing), str(self.mountpoint),
                 str(self.shadow)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file, text=True,
                start_new_session=True,  # a Ctrl-C of the test does not kill the server mid-request
            )  # fmt: skip
        threading.Thread(target=self._read_replies, name="powercut-replies", daemon=True).start()
        try:
            ready = self._next_reply()
            if ready.get("event") != "ready" or not _mounted(self.mountpoint):
                raise RuntimeError(f"unexpected {ready!r}")
        except BaseException:
            self.unmount()
            raise
        return self

    def _read_replies(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            self._replies.put(line)
        self._replies.put(None)

    def _next_reply(self) -> dict:
        try:
            line = self._replies.get(timeout=self.timeout)
        except queue.Empty:
            raise TimeoutError(
                f"power-cut FUSE server silent for {self.timeout:.0f}s; {self._tail()}"
            ) from None
        if line is None:
            raise RuntimeError(f"power-cut FUSE server exited; {self._tail()}")
        return json.loads(line)

    def _tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
            return f"log {self.log_path}:\n" + "\n".join(text)
        return f"no log at {self.log_path}"

    def cut(self, into: Path) -> dict:
        """Materialise the durable state into the fresh (absent or empty) folder `into`: the
        durable namespace with each file's durable content. The live state is untouched. Returns a
        report: durable_paths, live_paths, only_live and only_durable (paths whose name is not, or
        no longer, durable), stale (files whose durable size differs from the live size) and
        internal_errors (harness bugs; should be empty)."""
        if self._process is None or self._process.stdin is None:
            raise RuntimeError("not mounted")
        self._process.stdin.write(json.dumps({"op": "cut", "into": str(Path(into).resolve())}) + "\n")
        self._process.stdin.flush()
        reply = self._next_reply()
        if not reply.get("ok"):
            raise RuntimeError(f"cut failed in the FUSE server:\n{reply.get('error')}")
        return reply["result"]

    def unmount(self, grace: float = 10.0) -> None:
        """Unmount (lazily) and stop the server; SIGTERM, then SIGKILL if it does not exit."""
        process, self._process = self._process, None
        if process is not None:
            with contextlib.suppress(OSError, ValueError):
                process.stdin.write(json.dumps({"op": "quit"}) + "\n")
                process.stdin.close()  # EOF: the server detaches the mount, its FUSE loop ends
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _detach(self.mountpoint)  # files still open on it keep the session: end it
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
        if _mounted(self.mountpoint):
            _detach(self.mountpoint)
        shutil.rmtree(self.shadow, ignore_errors=True)


if __name__ == "__main__":
    main()
