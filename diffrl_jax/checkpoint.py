"""Checkpoints of any pytree train state plus the JSON config that built it.

Layout: `directory/<step>/state/` (orbax arrays) and
`directory/<step>/config/config.json`. Both items of a step are written into a temporary
directory that orbax renames into place only once everything is on disk, so a
step directory is either complete or absent; the JSON config is part of that
same atomic step, never written beside it afterwards.

The config is what makes a checkpoint self-contained: callers put the network
factory kwargs in it, so a policy can be rebuilt from disk alone
(`load_config`, build the networks, then `restore` into their abstract state).

Typed PRNG keys (`jax.random.key`) are stored as their raw uint32 key data and
rewrapped on restore; legacy uint32 keys are plain arrays and need nothing.

Problems a user can cause (a wrong directory, no checkpoint yet, a checkpoint
of another config whose shapes differ) raise `DataError` naming the directory
and the offending leaf, never a raw orbax traceback. A save the storage
refuses (a full disk) is an `OutputError`, with no partial step left behind.

Resuming uses `latest_intact_step`: the newest step whose config, metadata
and every array read back. A newer step that does not (its files
overwritten or truncated after the atomic rename: a disk fault, a careless
copy) is moved aside to `<directory>/<step>.damaged`, never deleted, and the
caller is told through `on_damaged`; orbax does not list such a directory.
"""

from __future__ import annotations

import os
import pathlib
import shutil
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from diffrl_jax.errors import DataError
from diffrl_jax.files import OutputError, is_storage_error

_STATE = "state"
_CONFIG = "config"
_CONFIG_FILE = "config.json"


def _manager(directory: pathlib.Path, keep: int | None = None, create: bool = False):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=create,
        enable_async_checkpointing=False,
        save_root_metadata=False,
    )
    handlers = {_STATE: ocp.StandardCheckpointHandler(), _CONFIG: ocp.JsonCheckpointHandler(filename=_CONFIG_FILE)}
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def _resolve(directory: str | os.PathLike) -> pathlib.Path:
    return pathlib.Path(directory).expanduser().resolve()


def _is_typed_key(x: Any) -> bool:
    return isinstance(x, jax.Array | jax.ShapeDtypeStruct) and jax.dtypes.issubdtype(
        x.dtype, jax.dtypes.prng_key
    )


def _key_impl(x):
    if isinstance(x, jax.Array):
        return jax.random.key_impl(x)
    return x.dtype._impl  # an abstract key: jax exposes no public accessor for its impl


def _unwrap_keys(tree):
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_typed_key(x) else x, tree)


def _leaf_path(path) -> str:
    """'a/l/0' for both `.a['l'][0]` and `['a']['l'][0]`: orbax metadata turns
    dataclasses into dicts and tuples into lists, so compare by names only."""

    def name(entry) -> str:
        for attr in ("name", "key", "idx"):
            if hasattr(entry, attr):
                return str(getattr(entry, attr))
        return str(entry)

    return "/".join(name(e) for e in path) or "<root>"


def save(directory: str | os.PathLike, step: int, state, config: dict, *, keep: int = 3) -> pathlib.Path:
    """Writes `state` and `config` to `directory/<step>/`; returns that path.

    Synchronous: returns once the step is complete on disk. Keeps the newest
    `keep` steps and deletes older ones. `config` must be JSON-serialisable.
    Saving a step that already exists raises `DataError`.
    """
    directory = _resolve(directory)
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    step = int(step)
    state = _unwrap_keys(state)
    try:
        manager = _manager(directory, keep=keep, create=True)
    except Exception as e:
        _raise_if_storage(directory, e)
        raise
    try:
        with manager:
            if step in manager.all_steps():
                raise DataError(f"checkpoint step {step} already exists in {directory}")
            manager.save(
                step,
                args=ocp.args.Composite(
                    **{_STATE: ocp.args.StandardSave(state), _CONFIG: ocp.args.JsonSave(config)}
                ),
            )
            manager.wait_until_finished()
    except BaseException as e:
        if isinstance(e, DataError):
            raise
        if jax.process_count() == 1:  # of several, the others may still be writing into it
            _remove_unfinished(directory, step)
        _raise_if_storage(directory / str(step), e)
        raise
    return directory / str(step)


def _remove_unfinished(directory: pathlib.Path, step: int) -> None:
    """Removes orbax's temporary directory of a failed save of `step` (never a step).

    Orbax's writer threads may still be finishing into it: they are waited
    for first, so none recreates it afterwards.
    """
    import threading

    from orbax.checkpoint._src.futures import future  # no public handle on its writer threads

    kind = getattr(future, "_SignalingThread", None)
    for thread in threading.enumerate():
        if kind is not None and isinstance(thread, kind) and thread is not threading.current_thread():
            thread.join(timeout=60)
    for tmp in directory.glob(f"{step}.orbax-checkpoint-tmp*"):
        shutil.rmtree(tmp, ignore_errors=True)


def _storage_reason(e: BaseException) -> str | None:
    """The storage's refusal behind `e` ("No space left on device"), if any, along its chain."""
    import errno

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if is_storage_error(e):
            return os.strerror(e.errno)
        for code in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS):  # tensorstore's errors are text
            if os.strerror(code) in str(e):
                return os.strerror(code)
        e = e.__cause__ or e.__context__
    return None


def _raise_if_storage(path: pathlib.Path, e: BaseException) -> None:
    reason = _storage_reason(e)
    if reason is not None:
        raise OutputError(f"cannot write checkpoint {path}: {reason}; nothing was written there") from e


def latest_step(directory: str | os.PathLike) -> int | None:
    """Newest complete step in `directory`, or None if it holds none (or is absent)."""
    directory = _resolve(directory)
    if not directory.is_dir():
        return None
    with _manager(directory) as manager:
        return manager.latest_step()


def _short(e: BaseException) -> str:
    """An orbax/tensorstore error in one short line."""
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return text if len(text) <= 160 else text[:157] + "..."


def _damage(manager, step: int) -> str | None:
    """Why `step` does not read back whole (its config, its state's metadata, any array), or None.

    Reads every array, shaped by the step's own metadata onto the default
    device (so a checkpoint written on other devices is not called damaged).
    """
    try:
        stored = manager.item_metadata(step)[_STATE]
        if stored is None:
            return "it holds no state"
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device),
                                getattr(stored, "tree", stored))
        manager.restore(step, args=ocp.args.Composite(
            **{_STATE: ocp.args.StandardRestore(abstract), _CONFIG: ocp.args.JsonRestore()}))
    except Exception as e:  # orbax and tensorstore raise a variety of types for unreadable files
        return _short(e)
    return None


def _aside(directory: pathlib.Path, step: int) -> pathlib.Path:
    """`directory/<step>.damaged` (or `.damaged-2`, ...: the first that is free)."""
    target, n = directory / f"{step}.damaged", 1
    while target.exists():
        n += 1
        target = directory / f"{step}.damaged-{n}"
    return target


def latest_intact_step(directory: str | os.PathLike, *,
                       on_damaged: Callable[[int, str, pathlib.Path], None] | None = None,
                       move_aside: bool = True) -> int | None:
    """The newest step of `directory` that reads back whole; None if it holds no step (or is absent).

    Newer steps that do not are moved aside (renamed `<step>.damaged`, see
    the module docstring) and reported as `on_damaged(step, reason, moved_to)`.
    `move_aside=False` (the other processes of a multi-process run) only
    skips them. Steps exist but none is intact: `DataError`. Reads every
    array of the step it returns once: meant for resuming, not for every load.
    """
    directory = _resolve(directory)
    if not directory.is_dir():
        return None
    damaged = []
    with _manager(directory) as manager:
        steps = sorted(manager.all_steps(), reverse=True)
        for step in steps:
            reason = _damage(manager, step)
            if reason is None:
                break
            damaged.append((step, reason))
        else:
            step = None
    for bad, reason in damaged:
        moved = _aside(directory, bad)
        if move_aside:
            try:
                os.rename(directory / str(bad), moved)
            except OSError as e:
                raise DataError(f"checkpoint step {bad} in {directory} is damaged ({reason}) and cannot be "
                                f"moved aside to {moved}: {os.strerror(e.errno)}") from None
        if on_damaged is not None:
            on_damaged(bad, reason, moved if move_aside else directory / str(bad))
    if steps and step is None:
        listed = "; ".join(f"step {bad}: {reason}" for bad, reason in damaged)
        where = f"moved aside as <step>.damaged in {directory}" if move_aside else f"left in {directory}"
        raise DataError(f"no intact checkpoint in {directory}: every step is damaged ({listed}); {where}")
    return step


def _checked_step(directory: pathlib.Path, manager, step: int | None) -> int:
    steps = manager.all_steps()
    if not steps:
        raise DataError(f"no checkpoint found in {directory}")
    if step is None:
        return max(steps)
    if int(step) not in steps:
        raise DataError(
            f"checkpoint step {step} not found in {directory}; available steps: {sorted(steps)}"
        )
    return int(step)


def _open(directory: str | os.PathLike):
    directory = _resolve(directory)
    if not directory.is_dir():
        raise DataError(f"checkpoint directory {directory} does not exist")
    return directory, _manager(directory)


def load_config(directory: str | os.PathLike, step: int | None = None) -> dict:
    """The JSON config saved with `step` (default: the latest step)."""
    directory, manager = _open(directory)
    with manager:
        step = _checked_step(directory, manager, step)
        try:
            restored = manager.restore(
                step, args=ocp.args.Composite(**{_CONFIG: ocp.args.JsonRestore()})
            )
        except Exception as e:  # orbax raises a variety of types for unreadable files
            raise DataError(f"cannot read config of checkpoint {directory / str(step)}: {e}") from e
    config = restored[_CONFIG]
    if not isinstance(config, dict):
        raise DataError(f"config of checkpoint {directory / str(step)} is not a JSON object")
    return config


def _abstract(target_state):
    """ShapeDtypeStructs (with a sharding, which orbax needs) for every leaf."""
    default_sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def leaf(x):
        if _is_typed_key(x):
            x = jax.eval_shape(jax.random.key_data, x)
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        if isinstance(x, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding or default_sharding)
        x = np.asarray(x)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=default_sharding)

    return jax.tree.map(leaf, target_state)


def _check_matches(path: pathlib.Path, abstract, stored) -> None:
    """DataError naming the first leaves whose structure, shape or dtype differ."""
    want, want_def = jax.tree_util.tree_flatten_with_path(abstract)
    # orbax metadata keeps the saved container types as dicts/lists, so compare by path strings.
    got = {_leaf_path(p): m for p, m in jax.tree_util.tree_flatten_with_path(stored)[0]}
    want_paths = {_leaf_path(p): x for p, x in want}
    missing = sorted(set(want_paths) - set(got))
    extra = sorted(set(got) - set(want_paths))
    problems = []
    if missing:
        problems.append(f"leaves missing from the checkpoint: {', '.join(missing[:5])}")
    if extra:
        problems.append(f"leaves in the checkpoint but not in the target: {', '.join(extra[:5])}")
    for name, x in want_paths.items():
        m = got.get(name)
        if m is None:
            continue
        shape, dtype = tuple(getattr(m, "shape", ())), getattr(m, "dtype", None)
        if shape != tuple(x.shape) or (dtype is not None and np.dtype(dtype) != np.dtype(x.dtype)):
            problems.append(
                f"{name}: checkpoint has {np.dtype(dtype) if dtype is not None else '?'}{list(shape)}, "
                f"target expects {np.dtype(x.dtype)}{list(x.shape)}"
            )
    if problems:
        raise DataError(
            f"checkpoint {path} does not match the target state (was it saved with another config?): "
            + "; ".join(problems[:8])
        )


def restore(directory: str | os.PathLike, target_state, step: int | None = None):
    """Restores `(state, config)` from `step` (default: the latest step).

    `target_state` (concrete arrays or `jax.ShapeDtypeStruct`s) gives the tree
    structure, shapes, dtypes and shardings of the result; a checkpoint that
    does not match it raises `DataError`.
    """
    directory, manager = _open(directory)
    with manager:
        step = _checked_step(directory, manager, step)
        path = directory / str(step)
        abstract = _abstract(target_state)
        try:
            stored = manager.item_metadata(step)[_STATE]
        except Exception as e:
            raise DataError(f"cannot read checkpoint {path}: {e}") from e
        if stored is None:
            raise DataError(f"checkpoint {path} holds no state")
        stored_tree = getattr(stored, "tree", stored)
        _check_matches(path, abstract, stored_tree)
        try:
            restored = manager.restore(
                step,
                args=ocp.args.Composite(
                    **{_STATE: ocp.args.StandardRestore(abstract), _CONFIG: ocp.args.JsonRestore()}
                ),
            )
        except Exception as e:  # corrupt or truncated files
            raise DataError(f"cannot restore checkpoint {path}: {e}") from e
    state = jax.tree.map(
        lambda t, x: jax.random.wrap_key_data(x, impl=_key_impl(t)) if _is_typed_key(t) else x,
        target_state,
        restored[_STATE],
    )
    return state, restored[_CONFIG]


def resume_step(directory: str | os.PathLike, primary: bool = True,
                warn: Callable[[str], None] | None = None) -> int | None:
    """The step to resume from (`latest_intact_step`), with one warning per damaged newer step
    it moved aside (`warn(message)`, default stderr); None when `directory` holds no checkpoint.

    `primary`: this process moves damaged steps aside (the others of a multi-process run only skip them).
    """
    if warn is None:
        import sys

        def warn(message):
            print(message, file=sys.stderr)

    damaged = []
    step = latest_intact_step(directory, move_aside=primary, on_damaged=lambda *report: damaged.append(report))
    for bad, reason, moved in damaged:
        warn(f"warning: checkpoint step {bad} is damaged ({reason}); "
             f"{'moved to ' + str(moved) if primary else 'skipped'}; resuming from step {step}")
    return step
