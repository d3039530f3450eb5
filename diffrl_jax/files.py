"""Output files that are never half-written, and locks on run directories.

Every file the project writes goes through `atomic_path`: the bytes go to a
temporary file beside the target, are flushed and fsynced, and only then
renamed over it. A failure part way (an exception, a full disk, a killed
process) leaves any previous file untouched; the temporary file is removed
unless the process was killed, and a killed writer's leftovers are hidden
dot-files (`.NAME.*`) that no reader looks at.

A write the operating system refuses (no space left, a quota, an I/O error, a
read-only file system) is an `OutputError` naming the file and the reason:
a user can cause it and fix it, so the CLI exits 2 with that message.

Logs that grow while a command runs (`metrics.jsonl`, the pipeline's
`stdout.txt`) are appended through `append_log`: a refused append is cut back
to the last whole line and raised as `OutputError`.

`run_lock(path)` takes an exclusive advisory lock (`fcntl.flock`) on a run or
output path for as long as the command writes it. A second writer gets a
`LockError` naming the holder's PID. The kernel drops the lock when its holder
exits in any way, SIGKILL included, so a lock left by a dead process is never
in the way. The lock file sits beside the path (`.NAME.lock` in its parent),
so a run directory's contents stay exactly what the command wrote; a path
inside one this process already holds (the pipeline's stages in its run
directory) is covered by that lock and gets no lock file of its own.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import pathlib
import shutil
import tempfile
import threading

from diffrl_jax.errors import DiffrlError

# Errors of the storage, not of the program: reported as OutputError.
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM}


class OutputError(DiffrlError):
    """An output file could not be written (disk full, quota, I/O error, permissions)."""


class LockError(DiffrlError):
    """Another live process is writing the same run or output path."""


def storage_error(path, e: OSError) -> OutputError:
    """The `OutputError` of a write of `path` the storage refused with `e`."""
    reason = os.strerror(e.errno) if e.errno else str(e)
    return OutputError(f"cannot write {path}: {reason} (errno {e.errno}); nothing was written there")


def is_storage_error(e: BaseException) -> bool:
    """Whether `e` is an `OSError` of the storage (full, quota, I/O, read-only, permissions)."""
    return isinstance(e, OSError) and e.errno in _STORAGE_ERRNOS


@contextlib.contextmanager
def output_errors(path):
    """Turns an `OSError` of the storage raised by the body into `OutputError` naming `path`.

    For writers this module does not wrap (orbax, copies of trees); the body
    is responsible for leaving nothing partial behind.
    """
    try:
        yield
    except OSError as e:
        if e.errno in _STORAGE_ERRNOS:
            raise storage_error(path, e) from None
        raise


# Errors only a write can cause: one that escapes a writer not wrapped here is still the
# user's to fix (a full disk), so `write_errors_reported` reports it, not a traceback.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


@contextlib.contextmanager
def write_errors_reported():
    """Turns an `OSError` that only a write can cause (full disk, quota, file too big,
    read-only file system) raised by the body into `OutputError`; others pass through."""
    try:
        yield
    except OSError as e:
        if e.errno not in _WRITE_ERRNOS:
            raise
        where = e.filename or "an output file"
        raise OutputError(f"cannot write {where}: {os.strerror(e.errno)} (errno {e.errno})") from None


def _fsync_dir(directory: pathlib.Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be fsynced
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path, suffix: str = ""):
    """Yields a temporary path beside `path`; on success it is fsynced and renamed to `path`.

    The body writes the temporary file by any means (numpy, PIL, PyAV,
    matplotlib). On any exception the temporary file is removed and `path`
    is left as it was; an `OSError` of the storage becomes `OutputError`.
    `suffix` keeps the extension writers that infer the format need.
    """
    path = pathlib.Path(path)
    if not path.parent.is_dir():
        raise OutputError(f"directory {path.parent} does not exist")
    with output_errors(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix + ".tmp")
    os.close(fd)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are for everyone to read
        os.replace(tmp, path)
    except OSError as e:
        pathlib.Path(tmp).unlink(missing_ok=True)
        if e.errno in _STORAGE_ERRNOS:
            raise storage_error(path, e) from None
        raise
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def staged_directory(destination):
    """Yields a staging path beside `destination` (`.NAME.tmp`, absent) for the body to fill;
    on success it replaces `destination` (and whatever was there), on any exception it is removed.

    For a whole directory written by other code (a DexGraspNet dataset): a
    reader never sees it half-written, and a full disk leaves no staging
    behind (a killed run's is removed by the next one).
    """
    destination = pathlib.Path(destination)
    staging = destination.parent / f".{destination.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with output_errors(destination):
            yield staging
            shutil.rmtree(destination, ignore_errors=True)
            os.replace(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync_dir(destination.parent)


def write_bytes_atomic(path, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text_atomic(path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename."""
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path, payload: dict) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2))


def jsonl_line(record: dict) -> str:
    """One metrics record as a strict-JSON line: a non-finite number (an episode
    mean with no episode finished, a diverged loss) becomes null, which `jq`
    and other strict readers accept where they refuse NaN."""
    def finite_or_none(value):
        return None if isinstance(value, float) and not math.isfinite(value) else value

    return json.dumps({k: finite_or_none(v) for k, v in record.items()}, allow_nan=False) + "\n"


def write_jsonl_atomic(path, records: list[dict]) -> None:
    write_text_atomic(path, "".join(jsonl_line(r) for r in records))


def write_npz_atomic(path, arrays: dict) -> None:
    """`np.savez` through a temporary file and a rename."""
    import numpy as np

    # A file object: given a name, np.savez appends ".npz" to one not ending so (the temporary's).
    with atomic_path(path, ".npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def save_figure_atomic(fig, path, dpi: int = 100) -> None:
    """Save a matplotlib figure as PNG through a temporary file, then close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)


class AppendLog:
    """A log file open for appending whole lines (see `append_log`)."""

    def __init__(self, path: pathlib.Path, fd: int):
        self.path, self._fd = path, fd
        self._size = os.lseek(fd, 0, os.SEEK_END)

    def write(self, text: str) -> int:
        """Appends `text`; on a refused write cuts the file back to before it and raises `OutputError`."""
        data = text.encode()
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            if e.errno in _STORAGE_ERRNOS:
                raise storage_error(self.path, e) from None
            raise
        self._size += len(data)
        return len(text)

    def write_record(self, record: dict) -> None:
        """One JSON line (`jsonl_line`)."""
        self.write(jsonl_line(record))

    def flush(self) -> None:  # every write goes straight to the file; print() calls this
        pass

    encoding = "utf-8"

    def isatty(self) -> bool:  # as a redirected stdout, for code that asks
        return False

    def writable(self) -> bool:
        return True


@contextlib.contextmanager
def append_log(path):
    """Opens `path` (created if missing) for appending; yields an `AppendLog`, closed at the end.

    Unbuffered: each `write` is on disk (in the page cache) when it returns,
    so a killed process leaves at most one torn last line, which `read_jsonl`
    drops. `print(..., file=log)` and `contextlib.redirect_stdout(log)` work.
    """
    path = pathlib.Path(path)
    with output_errors(path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        yield AppendLog(path, fd)
    finally:
        os.close(fd)


def read_jsonl(path, key: str, upto: int | None = None) -> list[dict]:
    """The records of a JSONL log, keeping those with `record[key] <= upto`.

    Used on resume to drop what was logged after the last checkpoint. A torn
    last line (a run killed while appending) is dropped; a bad line before it
    is a `DiffrlError`.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise DiffrlError(f"{path}: line {i + 1} is not JSON") from None
        if not isinstance(record, dict) or key not in record:
            raise DiffrlError(f"{path}: line {i + 1} has no {key!r}")
        records.append(record)
    return [r for r in records if upto is None or r[key] <= upto]


# ---------------------------------------------------------------------------
# Run locks.

# This process's locks, re-entrant: lock file -> [fd, depth, the locked path (resolved)].
_held: dict[pathlib.Path, list] = {}
_held_guard = threading.Lock()


def lock_file(path) -> pathlib.Path:
    """The lock file of a run or output path: `.NAME.lock` beside it."""
    path = pathlib.Path(path).expanduser().resolve()
    return path.parent / f".{path.name}.lock"


def _holder(lock: pathlib.Path) -> tuple[str, str | None]:
    """The holder's note in a lock file: ("pid N", "diffrl train"), or ("pid unknown", None)."""
    with contextlib.suppress(OSError, ValueError):
        lines = lock.read_text().splitlines()
        if lines and lines[0].strip():
            return lines[0].strip(), (lines[1].strip() or None) if len(lines) > 1 else None
    return "pid unknown", None


@contextlib.contextmanager
def run_lock(path, what: str = "command", create_parent: bool = True):
    """Holds an exclusive lock on the run or output `path` (a directory or a file) while the body runs.

    `what` names the command in the holder's note and in the error a second
    writer gets. The parent directory is created if missing (with
    `create_parent=False` a missing one is an `OutputError`). Re-entrant
    within a process (the pipeline runs each stage's command in-process), and
    a path inside one this process holds is covered by that lock; another
    process asking for the same path gets `LockError` at once, naming the
    holder's PID. Nothing is written at `path` itself.
    """
    target = pathlib.Path(path).expanduser().resolve()
    lock = target.parent / f".{target.name}.lock"
    if create_parent:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create {lock.parent}: {os.strerror(e.errno)}") from None
    elif not lock.parent.is_dir():
        raise OutputError(f"directory {lock.parent} does not exist")
    with _held_guard:
        entry = _held.get(lock) or next((e for e in _held.values() if e[2] in target.parents), None)
        if entry is not None:
            entry[1] += 1
    if entry is not None:
        try:
            yield lock
        finally:
            with _held_guard:
                entry[1] -= 1
        return
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise OutputError(f"cannot create the lock file {lock}: {os.strerror(e.errno)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        pid, holder = _holder(lock)
        raise LockError(
            f"{path} is being written by another {holder or 'process'} ({pid}); wait for it to finish "
            f"or give another output path (lock file {lock})"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}\n{what}\n".encode())
    except OSError:
        pass  # the lock holds without its note
    with _held_guard:
        _held[lock] = entry = [fd, 1, target]
    try:
        yield lock
    finally:
        with _held_guard:
            entry[1] -= 1
            last = entry[1] == 0
            if last:
                del _held[lock]
        if last:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # releases the flock; the file stays, so no one can lock a stale inode
