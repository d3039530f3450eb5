"""Validating a dataset: every grasp through the hold test, one compile for all.

The host side of the hold test (not jittable: it prepares objects and packs
chunks). Grasps are grouped by (object, scale) -- one simulated object each --
and packed into chunks of `groups` groups of `group_size` grasps, the one shape
the jitted `hold.make_hold_test` program is compiled for; short groups are
padded with copies whose results are dropped.

Every local device takes a share of each chunk (the group axis is split over
a `parallel.local_mesh()`, padded to a multiple of the device count), and
with several processes each validates its share of the groups
(`parallel.process_share`); `validate_dataset` merges the rows of all
processes (`parallel.allgather_rows`) so every process returns the whole
report.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import time
from collections.abc import Callable

import numpy as np

from diffrl_jax import parallel
from diffrl_jax.data.dexgraspnet import GraspDataset
from diffrl_jax.data.grasps import GRASP_DIM
from diffrl_jax.errors import ConfigError
from diffrl_jax.objects import assets
from diffrl_jax.runtime import usable_cpus
from diffrl_jax.sim import bank
from diffrl_jax.sim.protocol import DIRECTION_NAMES, HoldProtocol

BACKENDS = ("mjx", "mujoco")


@dataclasses.dataclass(frozen=True)
class ChunkConfig:
    """The fixed batch of the MJX program: `groups` objects x `group_size` grasps."""

    groups: int = 4
    group_size: int = 16

    def validate(self) -> "ChunkConfig":
        if self.groups < 1 or self.group_size < 1:
            raise ConfigError(f"chunk sizes must be positive, got {self.groups} x {self.group_size}")
        return self


@dataclasses.dataclass(frozen=True, eq=False)
class Entry:
    """One simulated object: a code at one scale, and its grasps (dataset rows)."""

    code: str
    scale: float
    rows: np.ndarray


def entries(dataset: GraspDataset, limit: int | None = None) -> list[Entry]:
    """(code, scale) groups of `dataset`, rows in file order; `limit` per code."""
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be positive, got {limit}")
    out = []
    for k, code in enumerate(dataset.object_codes):
        rows = np.nonzero(dataset.object_index == k)[0]
        if limit is not None:
            rows = rows[:limit]
        for scale in np.unique(dataset.scales[rows]):
            out.append(Entry(code, float(scale), rows[dataset.scales[rows] == scale]))
    return out


def prepare_entry(dataset: GraspDataset, entry: Entry, protocol: HoldProtocol,
                  budget: bank.ObjectBudget) -> bank.PreparedObject:
    obj = assets.mesh_object(dataset.mesh_path(entry.code), entry.scale, name=entry.code,
                             max_hull_vertices=budget.vertices)
    return bank.prepare_object(obj, budget, density=protocol.object_density,
                               mass_scale=protocol.mass_scale)


def protocol_json(protocol: HoldProtocol) -> dict:
    """The protocol's fields; unbounded criteria (inf) become null for strict JSON."""
    return {k: (None if isinstance(v, float) and math.isinf(v) else v)
            for k, v in dataclasses.asdict(protocol).items()}


def device_name(backend: str) -> str:
    if backend == "mujoco":
        return f"cpu ({platform.processor() or platform.machine()}, {usable_cpus()} threads, MuJoCo C)"
    import jax

    d = jax.devices()[0]
    count = f" x {jax.device_count()}" if jax.device_count() > 1 else ""
    return f"{d.platform} ({d.device_kind}){count}"


def _pack(items, groups: int):
    """Items (entry index, rows) -> chunks of exactly `groups` items (padded)."""
    for start in range(0, len(items), groups):
        chunk = items[start:start + groups]
        yield chunk + [chunk[-1]] * (groups - len(chunk)), len(chunk)


def process_entries(entry_list: list[Entry], group_size: int, process_id: int | None = None,
                    num_processes: int | None = None) -> list[Entry]:
    """This process's share of the work: entries cut into pieces of `group_size` rows.

    Pieces are split between processes by `parallel.process_share`, so each
    takes about the same number of grasps; a result per row does not depend
    on which process or chunk ran it.
    """
    pieces = [Entry(e.code, e.scale, e.rows[s:s + group_size])
              for e in entry_list for s in range(0, len(e.rows), group_size)]
    mine = parallel.process_share([len(p.rows) for p in pieces], process_id, num_processes)
    return [pieces[i] for i in mine]


def run_mjx(dataset, entry_list, template, chunk: ChunkConfig, progress=None, mesh=None):
    """Hold results per dataset row: dict of numpy arrays, and timings.

    The group axis of every chunk is split over `mesh` (default: this
    process's devices); `chunk.groups` is rounded up to a multiple of its size.
    """
    import jax

    from diffrl_jax.sim import hold

    mesh = parallel.local_mesh() if mesh is None else mesh
    chunk = dataclasses.replace(chunk, groups=parallel.padded_size(chunk.groups, parallel.num_shards(mesh)))

    fields = []
    for e in entry_list:
        fields.append(template.fields(prepare_entry(dataset, e, template.protocol, template.budget)))
    items = []
    for i, e in enumerate(entry_list):
        for s in range(0, len(e.rows), chunk.group_size):
            items.append((i, e.rows[s:s + chunk.group_size]))
    fn = hold.make_hold_test(template)
    n_total = len(dataset.grasps)
    out = _empty(n_total)
    jit_s, run_s, compiled = 0.0, 0.0, None
    for packed, real in _pack(items, chunk.groups):
        f = bank.stack_fields([fields[i] for i, _ in packed])
        g = np.zeros((chunk.groups, chunk.group_size, dataset.grasps.shape[1]), np.float32)
        for k, (_, rows) in enumerate(packed):
            g[k, :len(rows)] = dataset.grasps[rows]
            g[k, len(rows):] = dataset.grasps[rows[0]]
        f, g = parallel.shard_batch((f, g), mesh)
        if compiled is None:
            t = time.perf_counter()
            compiled = fn.lower(f, g).compile()
            jit_s = time.perf_counter() - t
        t = time.perf_counter()
        result = jax.device_get(compiled(f, g))
        run_s += time.perf_counter() - t
        for k, (_, rows) in enumerate(packed[:real]):
            _store(out, rows, jax.tree_util.tree_map(lambda x: x[k, :len(rows)], result))
        if progress:
            progress(sum(len(rows) for _, rows in packed[:real]))
    return out, jit_s, run_s


def run_mujoco(dataset, entry_list, template, nthread=None, progress=None):
    from diffrl_jax.sim import mujoco_backend

    out = _empty(len(dataset.grasps))
    jit_s, run_s = 0.0, 0.0
    for i, e in enumerate(entry_list):
        prepared = prepare_entry(dataset, e, template.protocol, template.budget)
        grasps = dataset.grasps[e.rows]
        if i == 0:  # the shared JAX squeeze targets compile on first use
            t = time.perf_counter()
            mujoco_backend.hold_test_mujoco(template, prepared, grasps[:1], nthread=nthread)
            jit_s = time.perf_counter() - t
        t = time.perf_counter()
        result = mujoco_backend.hold_test_mujoco(template, prepared, grasps, nthread=nthread)
        run_s += time.perf_counter() - t
        _store(out, e.rows, result)
        if progress:
            progress(len(e.rows))
    return out, jit_s, run_s


def _empty(n: int) -> dict:
    return {
        "done": np.zeros(n, bool), "success": np.zeros(n, bool),
        "held": np.zeros((n, len(DIRECTION_NAMES)), bool),
        "penetration_mm": np.zeros(n), "translation": np.zeros((n, len(DIRECTION_NAMES))),
        "rotation": np.zeros((n, len(DIRECTION_NAMES))),
        "settled": np.full((n, GRASP_DIM), np.nan),
    }


def _store(out: dict, rows: np.ndarray, result) -> None:
    out["done"][rows] = True
    for key in ("success", "held", "penetration_mm", "translation", "rotation", "settled"):
        out[key][rows] = np.asarray(getattr(result, key))


def validate_dataset(
        dataset: GraspDataset,
        protocol: HoldProtocol,
        backend: str = "mjx",
        budget: bank.ObjectBudget = bank.ObjectBudget(),
        chunk: ChunkConfig = ChunkConfig(),
        limit: int | None = None,
        nthread: int | None = None,
        progress: Callable[[int], None] | None = None,
        mesh=None,
) -> tuple[dict, dict]:
    """Runs the hold test on `dataset`; returns (report JSON dict, per-row arrays).

    With several processes (`jax.distributed`), each validates its share and
    every process returns the merged report and rows. `mesh`: the devices
    the MJX backend splits chunks over (default: this process's).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    protocol.validate()
    chunk.validate()
    mine, timings = validate_share(dataset, protocol, backend, budget, chunk, limit, nthread, progress, mesh)
    rows = parallel.allgather_rows(mine)
    timings = parallel.allgather_max(timings)
    return build_report(dataset, protocol, backend, rows, timings), rows


def validate_share(dataset, protocol, backend="mjx", budget=bank.ObjectBudget(), chunk=ChunkConfig(),
                   limit=None, nthread=None, progress=None, mesh=None,
                   process_id: int | None = None, num_processes: int | None = None) -> tuple[dict, dict]:
    """This process's part: per-row arrays with `done` marking its rows, and its timings.

    `parallel.merge_rows` of every process's rows is the whole result, so
    processes can also write their parts and merge them later.
    """
    entry_list = process_entries(entries(dataset, limit), chunk.group_size, process_id, num_processes)
    template = bank.make_template(protocol, budget)
    if backend == "mjx":
        rows, jit_s, run_s = run_mjx(dataset, entry_list, template, chunk, progress, mesh)
    else:
        rows, jit_s, run_s = run_mujoco(dataset, entry_list, template, nthread, progress)
    return rows, {"jit_s": jit_s, "run_s": run_s}


def build_report(dataset: GraspDataset, protocol: HoldProtocol, backend: str, rows: dict,
                 timings: dict) -> dict:
    """The report of per-row results `rows` (rows not `done` are left out).

    {"protocol", "backend", "device", "processes", "devices", "objects": {code:
    {"n", "success_rate", "direction_success" [6], "penetration_mm_median",
    "success" [n] in file order}}, "grasps_per_s", "physics_steps_per_s", "jit_s"}.
    Rates are over every process's grasps and the slowest process's time.
    """
    import jax

    objects = {}
    n_done = 0
    for k, code in enumerate(dataset.object_codes):
        sel = np.nonzero((dataset.object_index == k) & rows["done"])[0]
        if len(sel) == 0:
            continue
        n_done += len(sel)
        objects[code] = {
            "n": int(len(sel)),
            "success_rate": float(rows["success"][sel].mean()),
            "direction_success": [float(x) for x in rows["held"][sel].mean(axis=0)],
            "penetration_mm_median": float(np.median(rows["penetration_mm"][sel])),
            "success": [bool(x) for x in rows["success"][sel]],
        }
    run_s = timings["run_s"]
    return {
        "protocol": protocol_json(protocol),
        "backend": backend,
        "device": device_name(backend),
        "processes": jax.process_count(),
        "devices": jax.device_count() if backend == "mjx" else None,
        "directions": list(DIRECTION_NAMES),
        "objects": objects,
        "grasps_per_s": n_done / run_s if run_s > 0 else None,
        "physics_steps_per_s": n_done * protocol.total_steps / run_s if run_s > 0 else None,
        "jit_s": timings["jit_s"],
    }
