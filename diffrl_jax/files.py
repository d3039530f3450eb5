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

`run_lock(path)` takes an exclusive advisory lock (`fcntl.flock`) on a run or
output path for as long as the command writes it. A second writer gets a
`LockError` naming the holder's PID. The kernel drops the lock when its holder
exits in any way, SIGKILL included, so a lock left by a dead process is never
in the way. The lock file sits beside the path (`.NAME.lock` in its parent),
so a run directory's contents stay exactly what the command wrote.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import pathlib
import tempfile
import threading

from diffrl_jax.errors import DiffrlError

# Errors of the storage, not of the program: reported as OutputError.
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM}


class OutputError(DiffrlError):
    """An output file could not be written (disk full, quota, I/O error, permissions)."""


class LockError(DiffrlError):
    """Another live process is writing the same run or output path."""


def _storage_error(path, e: OSError) -> OutputError:
    reason = os.strerror(e.errno) if e.errno else str(e)
    return OutputError(f"cannot write {path}: {reason} (errno {e.errno}); nothing was written there")


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
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix + ".tmp")
    except OSError as e:
        if e.errno in _STORAGE_ERRNOS:
            raise _storage_error(path, e) from None
        raise
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
            raise _storage_error(path, e) from None
        raise
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


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

    with atomic_path(path, ".npz") as tmp:
        np.savez(tmp, **arrays)


def save_figure_atomic(fig, path, dpi: int = 100) -> None:
    """Save a matplotlib figure as PNG through a temporary file, then close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)


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

_held: dict[pathlib.Path, list] = {}  # lock file -> [fd, depth]: this process's locks, re-entrant
_held_guard = threading.Lock()


def lock_file(path) -> pathlib.Path:
    """The lock file of a run or output path: `.NAME.lock` beside it."""
    path = pathlib.Path(path).expanduser().resolve()
    return path.parent / f".{path.name}.lock"


def _holder(lock: pathlib.Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        text = lock.read_text().strip()
        if text:
            return text
    return "an unknown process"


@contextlib.contextmanager
def run_lock(path, what: str = "command"):
    """Holds an exclusive lock on the run or output `path` (a directory or a file) while the body runs.

    The parent directory is created if missing. Re-entrant within a process
    (the pipeline runs each stage's command in-process); another process
    asking for the same path gets `LockError` at once, naming the holder.
    """
    lock = lock_file(path)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create {lock.parent}: {os.strerror(e.errno)}") from None
    with _held_guard:
        entry = _held.get(lock)
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
        raise LockError(
            f"{path} is being written by another {what} ({_holder(lock)}); wait for it to finish "
            f"or give another output path (lock file {lock})"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
    except OSError:
        pass  # the lock holds without its note
    with _held_guard:
        _held[lock] = entry = [fd, 1]
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
