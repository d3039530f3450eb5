"""diffrl_jax.files: writes that cannot half-happen under a full disk, and run locks.

The full disk is injected: the writer's own write, numpy's save, fsync or the
final rename raises `OSError(ENOSPC)` part way. Each time the call is an
`OutputError` naming the file and the reason, the previous file is unchanged
and the directory holds no temporary file. Locks are held by a second
process (a subprocess), as another `diffrl` command would hold them.
"""

import errno
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from diffrl_jax import files
from diffrl_jax.files import LockError, OutputError

REPO = pathlib.Path(__file__).resolve().parents[1]
FULL = os.strerror(errno.ENOSPC)  # "No space left on device"


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, FULL)


class _HalfWritingFile:
    """A file whose write puts half the bytes on disk, then finds the disk full."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        self._f.write(data[: len(data) // 2])
        self._f.flush()
        _disk_full()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _half_writing_open(path, mode="r", *args, **kwargs):
    return _HalfWritingFile(open(path, mode, *args, **kwargs))


def _npz_half_then_full(file, *args, **kwargs):
    if hasattr(file, "write"):
        file.write(b"PK\x03\x04 half an archive")
        file.flush()
    else:
        pathlib.Path(file).write_bytes(b"PK\x03\x04 half an archive")
    _disk_full()


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    return fig


# (name, write(path)) for every writer of files.py and the dataset's .npy writer.
WRITERS = {
    "bytes": lambda path: files.write_bytes_atomic(path, b"new bytes " * 100),
    "text": lambda path: files.write_text_atomic(path, "new text\n" * 100),
    "json": lambda path: files.write_json_atomic(path, {"new": list(range(100))}),
    "jsonl": lambda path: files.write_jsonl_atomic(path, [{"step": i, "loss": 0.5} for i in range(100)]),
    "npz": lambda path: files.write_npz_atomic(path, {"a": np.arange(1000)}),
    "figure": lambda path: files.save_figure_atomic(_figure(), path),
    "npy": lambda path: __import__("diffrl_jax.data.safe_npy", fromlist=["x"]).save_object_npy(
        path, np.array([{"qpos": {}}] * 10, dtype=object)),
}


def _inject(monkeypatch, writer: str, where: str) -> None:
    if where == "fsync":
        monkeypatch.setattr(os, "fsync", _disk_full)  # delayed allocation: the disk is full at fsync
    elif where == "rename":
        monkeypatch.setattr(os, "replace", _disk_full)
    elif writer in ("bytes", "text", "json", "jsonl"):
        monkeypatch.setattr(files, "open", _half_writing_open, raising=False)
    elif writer == "npz":
        monkeypatch.setattr(np, "savez", _npz_half_then_full)
    elif writer == "npy":
        from diffrl_jax.data import safe_npy

        monkeypatch.setattr(safe_npy, "open", _half_writing_open, raising=False)
    elif writer == "figure":
        from matplotlib.figure import Figure

        def savefig(self, fname, **kwargs):
            pathlib.Path(fname).write_bytes(b"\x89PNG half an image")
            _disk_full()

        monkeypatch.setattr(Figure, "savefig", savefig)


@pytest.mark.parametrize("where", ["write", "fsync", "rename"])
@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_full_disk_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch, writer, where):
    path = tmp_path / f"out.{writer}"
    path.write_bytes(b"previous contents")
    _inject(monkeypatch, writer, where)
    with pytest.raises(OutputError, match=f"cannot write {path}: {FULL}"):
        WRITERS[writer](path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    assert path.read_bytes() == b"previous contents"
    WRITERS[writer](path)  # and with room again it writes, whole
    assert path.stat().st_size > len(b"previous contents")
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    if writer == "npz":
        with np.load(path) as f:
            np.testing.assert_array_equal(f["a"], np.arange(1000))


def test_a_writer_that_fails_otherwise_keeps_its_error_and_leaves_nothing(tmp_path):
    path = tmp_path / "out.txt"
    with pytest.raises(RuntimeError, match="encoder broke"), files.atomic_path(path) as tmp:
        pathlib.Path(tmp).write_text("half")
        raise RuntimeError("encoder broke")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OutputError, match="does not exist"):
        files.write_text_atomic(tmp_path / "missing" / "out.txt", "x")


def test_a_staged_directory_is_whole_or_absent(tmp_path, monkeypatch):
    out = tmp_path / "dataset"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(OutputError, match=f"cannot write {out}: {FULL}"), files.staged_directory(out) as staging:
        staging.mkdir()
        (staging / "grasps.npy").write_bytes(b"half")
        _disk_full()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    with files.staged_directory(out) as staging:
        staging.mkdir()
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]


def test_an_append_log_cut_short_by_a_full_disk_keeps_its_whole_lines(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    real_write = os.write
    with files.append_log(path) as log:
        log.write_record({"step": 10, "loss": 0.5})
        log_fd = log._fd

        def half_then_full(fd, data):
            if fd != log_fd:
                return real_write(fd, data)
            real_write(fd, bytes(data[: len(data) // 2]))
            _disk_full()

        monkeypatch.setattr(os, "write", half_then_full)
        with pytest.raises(OutputError, match=f"cannot write {path}: {FULL}"):
            log.write_record({"step": 20, "loss": 0.25})
        monkeypatch.undo()
        log.write_record({"step": 30, "loss": 0.125})
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [10, 30]
    assert files.read_jsonl(path, "step") == [{"step": 10, "loss": 0.5}, {"step": 30, "loss": 0.125}]


# --- run locks -----------------------------------------------------------------------------------

_HOLDER = textwrap.dedent("""
    import sys
    from diffrl_jax.files import run_lock
    with run_lock(sys.argv[1], sys.argv[2]):
        print("locked", flush=True)
        sys.stdin.read()  # held until the test closes stdin (or kills this process)
""")

_TRY = textwrap.dedent("""
    import sys
    from diffrl_jax.files import LockError, run_lock
    try:
        with run_lock(sys.argv[1], "test"):
            print("acquired")
    except LockError as e:
        print(e)
""")


@pytest.fixture
def hold_lock():
    """Starts a process holding `run_lock(path, what)`; yields a function returning it (a Popen)."""
    procs = []

    def start(path, what="diffrl train"):
        proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path), what], cwd=REPO,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _try_in_another_process(path) -> str:
    done = subprocess.run([sys.executable, "-c", _TRY, str(path)], cwd=REPO, capture_output=True, text=True,
                          check=True)
    return done.stdout.strip()


def test_a_second_process_gets_a_lock_error_naming_the_holder(tmp_path, hold_lock):
    out = tmp_path / "run"
    holder = hold_lock(out)
    with pytest.raises(LockError, match=rf"{out} is being written by another diffrl train \(pid {holder.pid}\)"):
        with files.run_lock(out, "diffrl sample"):
            pytest.fail("the lock was granted twice")
    # Nothing was written at the path itself; the lock file sits beside it.
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [".run.lock"]
    holder.stdin.close()
    holder.wait()
    with files.run_lock(out, "diffrl sample"):  # released when its holder finished
        assert f"pid {os.getpid()}" in files.lock_file(out).read_text()


def test_a_killed_holder_leaves_no_lock_in_the_way(tmp_path, hold_lock):
    out = tmp_path / "run"
    holder = hold_lock(out)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert files.lock_file(out).exists()  # its file stays, its lock went with the process
    with files.run_lock(out):
        pass


def test_the_lock_is_reentrant_and_covers_paths_inside_it(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with files.run_lock(run, "diffrl pipeline"):
        with files.run_lock(run, "diffrl pipeline"), files.run_lock(run / "train", "diffrl train"):
            assert f"pid {os.getpid()}" in _try_in_another_process(run)
        assert list(run.iterdir()) == []  # the stages' locks made no lock files in the run directory
        assert f"pid {os.getpid()}" in _try_in_another_process(run)  # still held by the outer one
    assert _try_in_another_process(run) == "acquired"


def test_a_lock_on_a_file_can_require_its_directory(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        with files.run_lock(tmp_path / "missing" / "report.json", create_parent=False):
            pass
    assert list(tmp_path.iterdir()) == []
    with files.run_lock(tmp_path / "new" / "run"):
        assert (tmp_path / "new").is_dir()


# --- whole commands ------------------------------------------------------------------------------

def _commands(out, data):
    """Every diffrl command that writes, with --out (or its positional) at `out`."""
    ckpt = str(data)  # never read: the lock comes first
    return {
        "train": ["train", data, "--out", out],
        "sample": ["sample", ckpt, "--object", "builtin:box", "--n", "2", "--out", out],
        "refine": ["refine", data, "--out", out, "--resume"],
        "evaluate": ["evaluate", ckpt, "--out", out],
        "robustness": ["robustness", data, "--out", out],
        "propose": ["propose", "--object", "builtin:box", "--out", out],
        "data example": ["data", "example", out],
        "validate": ["validate", data, "--out", out],
        "bench": ["bench", "--out", out],
        "pipeline": ["pipeline", "--out", out],
    }


@pytest.mark.parametrize("command", list(_commands("OUT", "DATA")))
def test_a_second_diffrl_writer_exits_2_naming_the_first(tmp_path, hold_lock, capsys, command):
    from diffrl_jax.cli.main import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("the first writer's")
    holder = hold_lock(out, "diffrl train")
    argv = _commands(str(out), str(tmp_path / "no-such-dataset"))[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: {out} is being written by another diffrl train (pid {holder.pid})" in err, err
    assert "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]  # touched nothing, checked nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "out"]


def test_an_experiment_script_is_locked_on_its_out(tmp_path, hold_lock, capsys):
    from diffrl_jax.experiments import seed_sweep

    out = tmp_path / "sweep"
    holder = hold_lock(out, "seed_sweep.py")
    assert seed_sweep.main([str(tmp_path / "no-such-dataset"), "--out", str(out)]) == 2
    assert f"is being written by another seed_sweep.py (pid {holder.pid})" in capsys.readouterr().err
    assert not out.exists()


def test_data_example_on_a_full_disk_exits_2_leaving_whole_files(tmp_path, monkeypatch, capsys):
    """`diffrl data example` rewriting a dataset: the disk fills while the second object is written."""
    from diffrl_jax.cli.main import main
    from diffrl_jax.data import safe_npy
    from diffrl_jax.data.dexgraspnet import load_dexgraspnet

    out = tmp_path / "example"
    argv = ["data", "example", str(out), "--objects", "box", "cylinder", "--n", "2"]
    assert main(argv) == 0
    cylinder = out / "grasps" / "builtin-cylinder.npy"
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real_open, calls = open, []

    def full_on_second_grasp_file(path, *args, **kwargs):
        calls.append(path)
        f = real_open(path, *args, **kwargs)
        return _HalfWritingFile(f) if len(calls) == 2 else f

    monkeypatch.setattr(safe_npy, "open", full_on_second_grasp_file, raising=False)
    assert main([*argv, "--seed", "1"]) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert f"error: cannot write {cylinder}: {FULL}" in err, err
    assert "Traceback" not in err
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert set(after) == set(before)  # no partial or temporary file
    assert after[cylinder] == before[cylinder]  # the file the disk refused is the previous one
    assert after[out / "grasps" / "builtin-box.npy"] != before[out / "grasps" / "builtin-box.npy"]  # rewritten whole
    assert load_dexgraspnet(out).object_codes == ("builtin-box", "builtin-cylinder")


def test_tensorboard_copy_stops_with_one_warning_when_the_disk_refuses(tmp_path, capsys):
    """refine's TensorBoard events are best effort: a refused write warns once and stops them."""
    from diffrl_jax.workflows.refine import TensorBoardLog

    class Refusing:
        calls = 0

        def add_scalar(self, *args):
            Refusing.calls += 1
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            raise AssertionError("a stopped copy is not flushed")

    board = TensorBoardLog(tmp_path / "tensorboard", purge_step=1)
    board._writer.close()  # the real writer, replaced by one on a full disk
    board._writer = Refusing()
    board.add_row({"iteration": 1, "env_steps": 8, "reward": 0.5, "loss": 1.0})
    board.flush()
    board.close()
    assert Refusing.calls == 1
    err = capsys.readouterr().err
    assert err.count("warning: TensorBoard events stopped (No space left on device)") == 1
