"""Fault injection: each long command SIGKILLed mid-run, then run again, ends as an uninterrupted run.

One uninterrupted tiny `diffrl pipeline` (MuJoCo C) is the reference of every
command: each of its stages ran the very `diffrl` command (and arguments) this
file runs alone, with only `--out` changed. Each command (and the pipeline
itself) is started as a subprocess, killed with SIGKILL when a seeded choice
of its intermediate files appears (or once its simulator library is loaded,
for the commands that write only at the end) plus a seeded random delay, and
then run again with the same arguments (train and the pipeline resume;
validate, sample and evaluate start again). `diffrl refine` is killed inside
the pipeline, whose refine stage runs it in-process, and resumed by the
pipeline's rerun (a stand-alone refine case would compile its uncacheable
programs twice more). Checked:

- after the kill, every file present is complete and reads back (JSON, JSONL,
  .npz, the grasp .npy files through the project's loader, PNGs, TensorBoard
  records, orbax checkpoints restored); the only leftovers are hidden
  temporaries (`.NAME.*.tmp`, `.NAME.tmp`, a mesh's `.CODE.*` staging
  directory), lock files (`.NAME.lock`) and orbax's `STEP.orbax-checkpoint-tmp*`;
- after the rerun, no orbax temporary is left and every file equals the
  reference's: bitwise for arrays, PNGs and meshes, JSON compared whole except
  the wall-time fields named in RUN_DEPENDENT, checkpoints restored and
  compared leaf by leaf, TensorBoard scalars compared by (tag, step).

DIFFRL_FAULT_SEED picks other kill points (default 0).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from _paths import SHARED_DATA, requires_shared_data

SEED = int(os.environ.get("DIFFRL_FAULT_SEED", "0"))
BOTTLE = "sem-Bottle-437678d4bc6be981c8724d5673a063a6"
# test_pipeline's tiny run, but 200 training steps: blocks of 100 with a checkpoint after each
# (the pipeline's stage settings), so a killed `diffrl train` resumes from a checkpoint mid-run;
# and PPO blocks of one iteration, so the pipeline killed after refine's first checkpoint
# resumes its training mid-run.
TINY = ["limit=6", "tabletop=false", "eval_compare=one-shot,first", "budget_pieces=3", "refine_iterations=2", "refine_block=1", "refine_envs=8", "refine_attempts=2", "refine_steps=1",
        "refine_robustness=2", "train_steps=200", "train_batch=16", "sample_n=8", "eval_poses=2",
        "eval_candidates=4", "videos=0", "hold.settle_s=0.02", "hold.hold_s=0.1", "lift.timestep=0.008",
        "lift.settle_s=0.5", "ppo.num_minibatches=2", "ppo.policy_hidden_sizes=32,32",
        "ppo.value_hidden_sizes=32,32", "diffusion.width=32", "diffusion.depth=1", "diffusion.time_dim=16",
        "diffusion.encoding_points=16", "diffusion.encoding_samples=256"]
PIPELINE_ARGV = ["pipeline", "--dataset", str(SHARED_DATA), "--objects", BOTTLE,
                 *[x for item in TINY for x in ("--set", item)]]

# JSON(L) fields that are wall times or rates: they differ between any two runs. Nothing else is excluded.
RUN_DEPENDENT = {"seconds", "timings_s", "jit_s", "grasps_per_s", "physics_steps_per_s", "steps_per_s"}
# Files that are logs of each attempt or orbax's own timestamps (checkpoints are compared restored).
RUN_DEPENDENT_FILES = {"stdout.txt", "_CHECKPOINT_METADATA", "commit_success.txt"}

# Where each command is killed: one of these is drawn (seeded), then a delay up to MAX_DELAY_S.
# A path relative to the output, or "lib:NAME": once the process has loaded a shared library of that name.
KILL_POINTS = {
    "validate": ["lib:libmujoco"],
    # train after a checkpoint, so that the rerun resumes from it (a kill before the first one
    # restarts from scratch, as validate, sample and evaluate do).
    "train": ["100", "200"],
    "sample": ["lib:tensorstore", "lib:libmujoco"],
    "evaluate": ["lib:tensorstore", "lib:libmujoco"],
    # The pipeline is killed inside its refine stage (the `diffrl refine` command, run in-process) after
    # the stage's first checkpoint, before its second: the rerun resumes refine's training from it, then
    # adapts. This is the SIGKILL test of refine, whose compiled programs (holding a MuJoCo C callback)
    # JAX cannot cache: a separate refine case would compile them twice more.
    "pipeline": ["refine/checkpoints/1"],
}
# The pipeline's is short: with its programs cached (the reference ran first) its second PPO
# iteration and checkpoint can follow the first within 0.1 s.
MAX_DELAY_S = {"validate": 1.5, "train": 0.5, "sample": 1.5, "evaluate": 3.0, "pipeline": 0.02}
# The file each command writes last: absent after the kill, or the kill came too late.
FINAL = {"validate": "", "train": "loss.png", "sample": f"meshdata/{BOTTLE}",
         "evaluate": "summary.json", "pipeline": "summary.json"}


def _command(argv) -> list[str]:
    return [sys.executable, "-m", "diffrl_jax.cli.main", *map(str, argv)]


def _run(argv, log: pathlib.Path) -> None:
    """Runs a `diffrl` command to its end (the environment, XLA_FLAGS included, is conftest's)."""
    with open(log, "ab") as f:
        code = subprocess.run(_command(argv), stdout=f, stderr=subprocess.STDOUT, check=False).returncode
    assert code == 0, f"diffrl {' '.join(map(str, argv))} exited {code}:\n{log.read_text()[-3000:]}"


def _loaded(pid: int, library: str) -> bool:
    try:
        return library in pathlib.Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def _kill_mid_run(command: str, argv, out: pathlib.Path, final: pathlib.Path, log: pathlib.Path) -> str:
    """Starts `diffrl ARGV`, SIGKILLs it at a seeded point before it finishes; says where.

    A run that finished before the kill (the delay outlasted it) is cleared and
    tried again with a quarter of the delay, at most three times.
    """
    rng = random.Random(f"{SEED}-{command}")
    point = rng.choice(KILL_POINTS[command])
    max_delay = MAX_DELAY_S[command]
    for attempt in range(3):
        delay = rng.uniform(0.0, max_delay)
        with open(log, "ab") as f:
            proc = subprocess.Popen(_command(argv), stdout=f, stderr=subprocess.STDOUT)
        try:
            while proc.poll() is None and not (
                    _loaded(proc.pid, point[4:]) if point.startswith("lib:") else (out / point).exists()):
                time.sleep(0.01)
            time.sleep(delay)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        finally:
            code = proc.wait()
        if code == -signal.SIGKILL:
            assert not final.exists(), f"{command}: killed after it wrote its last file {final}"
            return f"{point} + {delay:.2f} s (attempt {attempt + 1})"
        assert code == 0, f"{command} exited {code} before the kill:\n{log.read_text()[-3000:]}"
        if out.is_dir():
            shutil.rmtree(out)
        else:
            out.unlink()
        max_delay /= 4
    raise AssertionError(f"{command} finished before every kill at {point}")


# --- what a killed run leaves ---------------------------------------------------------------------

def _is_temporary(path: pathlib.Path) -> bool:
    """A killed writer's leftover that no reader looks at."""
    name = path.name
    if name.startswith("."):
        return name.endswith((".tmp", ".lock")) or (path.is_dir() and path.parent.name == "meshdata")
    return ".orbax-checkpoint-tmp" in name


def _entries(root: pathlib.Path):
    """(path, kind) of what `root` holds: 'temporary', 'checkpoint' (a step directory), or 'file'."""
    if root.is_file():
        yield root, "file"
        return
    for path in sorted(root.iterdir()):
        if _is_temporary(path):
            yield path, "temporary"
        elif path.is_dir() and path.name.isdigit() and (path / "state").is_dir():
            yield path, "checkpoint"
        elif path.is_dir():
            yield from _entries(path)
        else:
            yield path, "file"


def _event_records(path: pathlib.Path) -> list[bytes]:
    """The records of a TensorBoard event file (TFRecord framing: length, its CRC, data, its CRC)."""
    data, records, at = path.read_bytes(), [], 0
    while at < len(data):
        assert at + 12 <= len(data), f"{path}: a torn record header at byte {at}"
        (length,) = struct.unpack("<Q", data[at:at + 8])
        assert at + 12 + length + 4 <= len(data), f"{path}: a torn record at byte {at}"
        records.append(data[at + 12:at + 12 + length])
        at += 12 + length + 4
    return records


def _scalars(directory: pathlib.Path) -> dict:
    """{(tag, step): value} of a TensorBoard directory's event files, a later file winning (as after a purge)."""
    from tensorboardX.proto import event_pb2

    out = {}
    for path in sorted(directory.glob("*tfevents*"), key=lambda p: p.stat().st_mtime_ns):
        for record in _event_records(path):
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                out[(value.tag, event.step)] = value.simple_value
    return out


def _restore(step_dir: pathlib.Path):
    """A checkpoint step restored without a target: (its arrays by path, its config)."""
    import jax
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
        state = checkpointer.restore(step_dir / "state")
    leaves = {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}
    return leaves, json.loads((step_dir / "config" / "config.json").read_text())


def _read(path: pathlib.Path):
    """The content of an output file, read as its readers do; raises if it is incomplete."""
    from diffrl_jax.data.safe_npy import load_object_npy

    suffix = path.suffix
    if path.name in RUN_DEPENDENT_FILES:
        return path.read_text()
    if suffix == ".json":
        return json.loads(path.read_text())
    if suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    if suffix == ".npz":
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    if suffix == ".npy":
        return load_object_npy(path).tolist()
    if suffix == ".png":
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and data.endswith(b"IEND\xaeB`\x82"), f"{path}: not a whole PNG"
        return data
    if suffix in (".obj", ".md"):
        return path.read_text()
    if "tfevents" in path.name:
        return _event_records(path)
    raise AssertionError(f"{path}: no reader for this file")


def _check_complete(root: pathlib.Path) -> list[str]:
    """Every file under `root` reads back whole, and every grasp directory loads; the leftovers' names."""
    from diffrl_jax.data.dexgraspnet import load_dexgraspnet

    leftovers = []
    for path, kind in _entries(root):
        if kind == "temporary":
            leftovers.append(path.relative_to(root.parent).as_posix())
            continue
        try:
            _restore(path) if kind == "checkpoint" else _read(path)
        except Exception as e:
            raise AssertionError(f"{path} is incomplete or unreadable: {e!r}") from e
    if root.is_file():  # a report written beside others: its own temporaries
        leftovers += [p.name for p in root.parent.glob(f".{root.name}.*") if not p.name.endswith(".lock")]
    for grasps in root.rglob("grasps") if root.is_dir() else ():
        if any(grasps.glob("*.npy")):  # a DexGraspNet directory: loads whole, meshes included
            load_dexgraspnet(grasps.parent)
    return leftovers


# --- comparing with the reference -----------------------------------------------------------------

def _without_run_dependent(value):
    if isinstance(value, dict):
        return {k: _without_run_dependent(v) for k, v in value.items() if k not in RUN_DEPENDENT}
    if isinstance(value, list):
        return [_without_run_dependent(v) for v in value]
    return value


def _canonical(value, paths: dict[str, str]) -> str:
    """JSON text of `value` without the run-dependent fields, this run's paths as the reference's."""
    text = json.dumps(_without_run_dependent(value), sort_keys=True)
    for mine, theirs in paths.items():
        text = text.replace(mine, theirs)
    return text


def _without_timings_table(markdown: str) -> str:
    """report.md without its "## Timings" section (seconds per stage)."""
    return re.sub(r"## Timings\n.*?(?=\n## )", "## Timings\n", markdown, flags=re.DOTALL)


def _compare(reference: pathlib.Path, got: pathlib.Path, paths: dict[str, str]) -> None:
    def files(root):
        return {p.relative_to(root).as_posix(): (p, kind) for p, kind in _entries(root) if kind != "temporary"}

    want, have = files(reference), files(got)
    def skip(rel):  # event files are named by their writer's start time: their scalars are compared
        name = rel.rsplit("/", 1)[-1]
        return name in RUN_DEPENDENT_FILES or "tfevents" in name

    assert sorted(r for r in have if not skip(r)) == sorted(r for r in want if not skip(r))
    for rel, (path, kind) in want.items():
        mine = have[rel][0] if rel in have else None
        if skip(rel):
            continue
        if kind == "checkpoint":
            (a, config_a), (b, config_b) = _restore(path), _restore(mine)
            assert _canonical(config_b, paths) == _canonical(config_a, {}), rel
            assert sorted(a) == sorted(b), rel
            for leaf in a:
                np.testing.assert_array_equal(b[leaf], a[leaf], err_msg=f"{rel} {leaf}")
        elif path.suffix in (".json", ".jsonl"):
            assert _canonical(_read(mine), paths) == _canonical(_read(path), {}), rel
        elif path.suffix == ".npz":
            a, b = _read(path), _read(mine)
            assert sorted(a) == sorted(b), rel
            for k in a:
                assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, f"{rel} {k}"
                np.testing.assert_array_equal(b[k], a[k], err_msg=f"{rel} {k}")
        elif path.suffix == ".md":
            text = _without_timings_table(mine.read_text())
            for m, t in paths.items():
                text = text.replace(m, t)
            assert text == _without_timings_table(path.read_text()), rel
        else:  # .npy (pickled records of Python floats), .png, .obj: byte for byte
            assert mine.read_bytes() == path.read_bytes(), rel
    for tensorboard in reference.rglob("tensorboard"):
        rel = tensorboard.relative_to(reference)
        assert _scalars(got / rel) == _scalars(tensorboard), f"{rel}: other TensorBoard scalars"


# --- the runs ---------------------------------------------------------------------------------------

def _stage_argv(reference: pathlib.Path, stage: str, command: str) -> list[str]:
    """The argv of the first `diffrl COMMAND` that the reference pipeline's STAGE ran (its stdout.txt)."""
    for line in (reference / stage / "stdout.txt").read_text().splitlines():
        if line.startswith(f"$ diffrl {command} "):
            return line.split()[2:]
    raise AssertionError(f"the {stage} stage ran no diffrl {command}")


def _with_out(argv: list[str], out: pathlib.Path) -> list[str]:
    at = argv.index("--out")
    return [*argv[:at + 1], str(out), *argv[at + 2:]]


def _fault(command: str, argv, out: pathlib.Path, reference: pathlib.Path, tmp: pathlib.Path) -> dict:
    """Kills `diffrl ARGV` mid-run, checks what it left, runs it again; what the test checks."""
    result = {"out": out, "reference": reference}
    try:
        log = tmp / f"{command}.log"
        final = out / FINAL[command] if FINAL[command] else out
        result["killed_at"] = _kill_mid_run(command, argv, out, final, log)
        result["refine_finished_at_kill"] = (out / "refine" / "summary.json").exists()
        checkpoints = out / "refine" / "checkpoints"
        result["refine_checkpoints_at_kill"] = sorted(
            p.name for p in checkpoints.iterdir() if p.name.isdigit()) if checkpoints.is_dir() else []
        result["left_after_kill"] = _check_complete(out) if out.exists() else \
            [p.name for p in out.parent.glob(f".{out.name}.*") if not p.name.endswith(".lock")]
        _run(argv, log)
        result["left_after_rerun"] = _check_complete(out)
    except BaseException as e:  # reported by this command's test, not by the fixture
        result["error"] = e
    return result


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    """The reference pipeline, then every command killed and run again (two at a time)."""
    tmp = tmp_path_factory.mktemp("faults")
    reference = tmp / "reference" / "run"
    killed = tmp / "killed" / "run"  # the same name: report.md is titled by it
    killed.parent.mkdir()
    start = time.perf_counter()
    # The reference first, alone: every later run then finds its programs in the persistent
    # compilation cache (two runs started together compiled each of them twice).
    _run([*PIPELINE_ARGV, "--out", reference], tmp / "reference.log")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = {"pipeline": pool.submit(_fault, "pipeline", [*PIPELINE_ARGV, "--out", killed], killed,
                                           reference, tmp)}
        # Each command as its stage ran it, into a new --out; the stage's output is the reference.
        stages = {"validate": ("validate", "validate/report.json", "validate.json"),
                  "train": ("train", "train", "train"),
                  "sample": ("sample", "sample/grasps", "sample"), "evaluate": ("evaluate", "evaluate", "evaluate")}
        for command, (stage, stage_out, out) in stages.items():
            argv = _with_out(_stage_argv(reference, stage, command), tmp / out)
            assert str(reference / stage_out) in _stage_argv(reference, stage, command)
            results[command] = pool.submit(_fault, command, argv, tmp / out, reference / stage_out, tmp)
        results = {k: f.result() for k, f in results.items()}
    print(f"fault injection: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    for command, r in results.items():
        print(f"  {command}: killed at {r.get('killed_at')}; left {r.get('left_after_kill')}, "
              f"after the rerun {r.get('left_after_rerun')}", file=sys.stderr)
    return results


@requires_shared_data
@pytest.mark.parametrize("command", ["validate", "train", "sample", "evaluate", "pipeline"])
def test_killed_run_ends_as_an_uninterrupted_one(faults, command):
    r = faults[command]
    if "error" in r:
        raise r["error"]
    assert "attempt" in r["killed_at"]
    if command == "pipeline":  # killed inside its refine stage, mid-training: refine's SIGKILL test
        assert "refine/checkpoints/1" in r["killed_at"] and not r["refine_finished_at_kill"], r["killed_at"]
        assert r["refine_checkpoints_at_kill"] == ["1"], (r["killed_at"], r["refine_checkpoints_at_kill"])
    # Killed writers leave only hidden temporaries and lock files; orbax's are gone once the rerun saved again.
    assert not [p for p in r["left_after_rerun"] if ".orbax-checkpoint-tmp" in p], r["left_after_rerun"]
    # The pipeline's files name its run directory; the commands' name only their inputs, the same ones.
    _compare(r["reference"], r["out"], {str(r["out"]): str(r["reference"])} if command == "pipeline" else {})
