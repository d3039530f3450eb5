"""Data parallelism over every device, and over several hosts, with JAX's own runtime.

One mesh axis, `data`, spans the devices; batches are sharded along their
leading axis (`NamedSharding(mesh, P("data"))`) and everything else (network
parameters, object geometry shared by a batch) is replicated. Jitted
functions then run as one SPMD program: XLA partitions per-row work without
communication and inserts the all-reduce of gradients itself. No `pmap`.

Several hosts: `initialize(DistributedConfig)` wraps `jax.distributed.initialize`
(coordinator address, process count and id from flags or the usual
environment variables, or JAX's cluster auto-detection). After it,
`jax.devices()` lists every process's devices, so `data_mesh()` spans hosts and
a jitted training step is one program across processes; work that needs no
communication (validating grasps) is split with `process_share`, and results
come back together with `allgather_rows`.

The functions that place arrays (`shard_batch`, `replicate`) are host-side;
`constrain_batch` is the one used inside jitted code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from diffrl_jax.errors import ConfigError

AXIS = "data"
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh over `devices` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ConfigError("no devices to build a mesh over")
    return Mesh(np.asarray(devices), (AXIS,))


def local_mesh() -> Mesh:
    """A mesh over this process's devices only (for work needing no other process)."""
    return data_mesh(jax.local_devices())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over the mesh, every other axis whole."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def num_shards(mesh: Mesh | None) -> int:
    return 1 if mesh is None else int(mesh.devices.size)


def padded_size(n: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is at least `n` (and at least `multiple`)."""
    if n < 0 or multiple < 1:
        raise ConfigError(f"cannot pad {n} rows to a multiple of {multiple}")
    return max(multiple, -(-n // multiple) * multiple)


def pad_batch(tree, multiple: int):
    """Pads every leaf's leading axis to a multiple of `multiple` by repeating its last row.

    Returns (padded tree, n) with n the original size; callers drop rows n..
    of the results. Padding with a real row (not zeros) keeps padded worlds
    physically valid, so they cost time but never produce NaN.
    """
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        return tree, 0
    n = int(np.shape(leaves[0])[0])
    if any(int(np.shape(x)[0]) != n for x in leaves):
        raise ConfigError("pad_batch: leaves disagree on the batch size")
    if n == 0:
        raise ConfigError("pad_batch: empty batch")
    size = padded_size(n, multiple)
    if size == n:
        return tree, n

    def pad(x):
        x = np.asarray(x)
        return np.concatenate([x, np.repeat(x[-1:], size - n, axis=0)], axis=0)

    return jax.tree_util.tree_map(pad, tree), n


def check_divisible(n: int, mesh: Mesh | None, what: str) -> None:
    """A clear error when a batch of `n` cannot be split evenly over the mesh."""
    shards = num_shards(mesh)
    if n % shards:
        raise ConfigError(f"{what} {n} does not divide over {shards} devices; "
                          f"use a multiple of {shards} (e.g. {padded_size(n, shards)})")


def shard_batch(tree, mesh: Mesh):
    """Places a host pytree on the mesh, leading axes split (sizes must divide)."""
    sharding = batch_sharding(mesh)
    for x in jax.tree_util.tree_leaves(tree):
        check_divisible(int(np.shape(x)[0]), mesh, "batch size")
    if jax.process_count() > 1 and not _is_local(mesh):
        # Every process holds the whole host array (same seed, same data): each
        # contributes the rows of its own devices.
        return jax.tree_util.tree_map(
            lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda i, x=x: np.asarray(x)[i]),
            tree)
    return jax.device_put(tree, sharding)


def replicate(tree, mesh: Mesh):
    """Places a host pytree whole on every device of the mesh."""
    sharding = replicated_sharding(mesh)
    if jax.process_count() > 1 and not _is_local(mesh):
        return jax.tree_util.tree_map(
            lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda i, x=x: np.asarray(x)[i]),
            tree)
    return jax.device_put(tree, sharding)


def constrain_batch(tree, mesh: Mesh | None):
    """Inside jit: asks XLA to keep leading axes split over `mesh` (no-op for None)."""
    if mesh is None:
        return tree
    sharding = batch_sharding(mesh)
    return jax.tree_util.tree_map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)


def to_host(tree):
    """A fully addressable copy of `tree` as numpy (gathers across processes if needed)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        leaves, treedef = jax.tree_util.tree_flatten(tree)
        with _stdout_to_stderr():
            out = [np.asarray(multihost_utils.process_allgather(x, tiled=True))
                   if isinstance(x, jax.Array) and not x.is_fully_addressable else np.asarray(x)
                   for x in leaves]
        return jax.tree_util.tree_unflatten(treedef, out)
    return jax.device_get(tree)


def _is_local(mesh: Mesh) -> bool:
    return all(d.process_index == jax.process_index() for d in mesh.devices.flat)


# ---------------------------------------------------------------- several hosts

@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """Where the coordinator listens and which process this is.

    All None: a single process (unless a cluster is detected by JAX when
    `auto_detect` is set).
    """

    coordinator: str | None = None  # host:port of process 0
    num_processes: int | None = None
    process_id: int | None = None
    auto_detect: bool = False  # let JAX detect SLURM / Open MPI / cloud TPU settings

    @classmethod
    def from_env(cls, coordinator=None, num_processes=None, process_id=None,
                 environ=None) -> "DistributedConfig":
        """Flags win over $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, $JAX_PROCESS_ID."""
        environ = os.environ if environ is None else environ

        def integer(value, name):
            if value is None or isinstance(value, int):
                return value
            try:
                return int(value)
            except ValueError:
                raise ConfigError(f"{name} must be an integer, got {value!r}") from None

        return cls(
            coordinator=coordinator or environ.get(ENV_COORDINATOR) or None,
            num_processes=integer(num_processes if num_processes is not None
                                  else environ.get(ENV_NUM_PROCESSES), ENV_NUM_PROCESSES),
            process_id=integer(process_id if process_id is not None
                               else environ.get(ENV_PROCESS_ID), ENV_PROCESS_ID),
        ).validate()

    @property
    def enabled(self) -> bool:
        return self.auto_detect or any(v is not None for v in
                                       (self.coordinator, self.num_processes, self.process_id))

    def validate(self) -> "DistributedConfig":
        if self.auto_detect or not self.enabled:
            return self
        missing = [name for name, v in (("coordinator address", self.coordinator),
                                        ("number of processes", self.num_processes),
                                        ("process id", self.process_id)) if v is None]
        if missing:
            raise ConfigError(f"several processes need a coordinator address, a number of processes and "
                              f"a process id; missing: {', '.join(missing)} (flags --coordinator, "
                              f"--num-processes, --process-id or ${ENV_COORDINATOR}, "
                              f"${ENV_NUM_PROCESSES}, ${ENV_PROCESS_ID})")
        host, sep, port = self.coordinator.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"coordinator address must be HOST:PORT, got {self.coordinator!r}")
        if self.num_processes < 1:
            raise ConfigError(f"number of processes must be at least 1, got {self.num_processes}")
        if not 0 <= self.process_id < self.num_processes:
            raise ConfigError(f"process id must lie in [0, {self.num_processes}), got {self.process_id}")
        return self


def initialize(config: DistributedConfig, timeout_s: int = 300) -> None:
    """Joins the distributed runtime (once, before any computation); no-op if disabled."""
    config.validate()
    if not config.enabled:
        return
    from jax._src import distributed as _distributed

    if _distributed.global_state.client is not None:
        return  # already joined
    try:
        if config.auto_detect:
            jax.distributed.initialize(initialization_timeout=timeout_s)
        else:
            jax.distributed.initialize(config.coordinator, config.num_processes, config.process_id,
                                       initialization_timeout=timeout_s)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"could not join the distributed runtime at {config.coordinator}: {e}") from None


def process_share(sizes: Sequence[int], process_id: int | None = None,
                  num_processes: int | None = None) -> np.ndarray:
    """Indices of the items this process takes: contiguous runs balanced by `sizes`.

    Item i goes to process floor(P * (cumulative size before i + size_i / 2) /
    total), so every process gets about total / P of the work and the split is
    the same in every process.
    """
    process_id = jax.process_index() if process_id is None else process_id
    num_processes = jax.process_count() if num_processes is None else num_processes
    sizes = np.asarray(sizes, np.float64)
    if len(sizes) == 0:
        return np.zeros(0, np.int64)
    total = sizes.sum()
    if total <= 0:
        owner = np.arange(len(sizes)) * num_processes // len(sizes)
    else:
        centre = np.cumsum(sizes) - sizes / 2
        owner = np.minimum((num_processes * centre / total).astype(np.int64), num_processes - 1)
    return np.nonzero(owner == process_id)[0]


def allgather_rows(rows: dict, done_key: str = "done") -> dict:
    """Merges per-process row arrays (each process filled the rows it marked done).

    Every array has the dataset's row count as leading axis in every process;
    the result takes each row from the process that did it. Runs a collective
    (gloo on CPU) when several processes run, else returns `rows` unchanged.
    """
    if jax.process_count() == 1:
        return rows
    gathered = {k: _allgather_exact(np.asarray(v)) for k, v in rows.items()}
    return merge_rows([{k: v[p] for k, v in gathered.items()} for p in range(jax.process_count())],
                      done_key)


@contextlib.contextmanager
def _stdout_to_stderr():
    """Sends file descriptor 1 to 2 meanwhile: gloo prints its connection log to
    stdout from C++, which would corrupt a command's `--json` output."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _allgather(x):
    from jax.experimental import multihost_utils

    with _stdout_to_stderr():
        return np.asarray(multihost_utils.process_allgather(x))


def _allgather_exact(x: np.ndarray) -> np.ndarray:
    """[...] in every process -> [P, ...], bit for bit (float64 survives JAX's 32-bit mode)."""
    raw = np.ascontiguousarray(x).reshape(x.shape[:1] + (-1,)).view(np.uint8)
    gathered = _allgather(raw)
    return np.ascontiguousarray(gathered).view(x.dtype).reshape((-1,) + x.shape)


def allgather_max(values: dict[str, float]) -> dict[str, float]:
    """Each scalar's largest value over processes (e.g. the slowest process's time)."""
    if jax.process_count() == 1:
        return dict(values)
    names = sorted(values)
    gathered = _allgather(np.array([values[k] for k in names], np.float32))
    return {k: float(v) for k, v in zip(names, gathered.max(axis=0))}


def merge_rows(parts: Sequence[dict], done_key: str = "done") -> dict:
    """Row arrays of several parts -> one, row r taken from the part that did it."""
    if not parts:
        raise ConfigError("no parts to merge")
    done = np.stack([np.asarray(p[done_key], bool) for p in parts])
    if np.any(done.sum(0) > 1):
        raise ConfigError(f"parts overlap: {int((done.sum(0) > 1).sum())} rows were done twice")
    out = {k: np.array(v, copy=True) for k, v in parts[0].items()}
    for part, mask in zip(parts[1:], done[1:]):
        for k, v in part.items():
            out[k][mask] = np.asarray(v)[mask]
    out[done_key] = done.any(0)
    return out
