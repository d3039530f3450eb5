"""Validating a dataset: every grasp through the hold test, one compile for all.

The host side of the hold test (not jittable: it prepares objects and
gathers rows). Grasps are grouped by (object, scale) -- one simulated object
each -- and the groups go to a backend's `hold_objects` (`sim.backends`):
MJX packs them into chunks of `groups` groups of `group_size` grasps, the one
shape its jitted program is compiled for, split over the local devices; the C
engine runs them object by object on threads.

With several processes each validates its share of the groups
(`parallel.process_share`); `validate_dataset` merges the rows of all
processes (`parallel.allgather_rows`) so every process returns the whole
report.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from diffrl_jax import configs, parallel
from diffrl_jax.data.dexgraspnet import GraspDataset
from diffrl_jax.data.grasps import GRASP_DIM
from diffrl_jax.errors import ConfigError
from diffrl_jax.objects import assets
from diffrl_jax.sim import backends, bank
from diffrl_jax.sim.backends import ChunkConfig
from diffrl_jax.sim.protocol import DIRECTION_NAMES, HoldProtocol


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
    return bank.prepare_object(obj, budget, density=protocol.physics.object_density,
                               mass_scale=protocol.physics.mass_scale)


def protocol_json(protocol: HoldProtocol) -> dict:
    """The protocol's fields, nested (`physics`, `squeeze`); unbounded criteria (inf) become null
    for strict JSON. `HoldProtocol.from_json` reads it back."""
    return configs.to_json(protocol)


def device_name(backend: str | backends.Backend) -> str:
    """Where `backend` (a name or a `Backend`) runs, in words."""
    return backends.get(backend).device_name()


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


def run_entries(dataset: GraspDataset, entry_list: list[Entry], template: bank.SimTemplate,
                backend: backends.Backend, progress=None) -> tuple[dict, float, float]:
    """Hold results per dataset row (dict of numpy arrays, rows of `entry_list` marked
    `done`), compile seconds and run seconds, on `backend`."""
    def prepare(i):
        return prepare_entry(dataset, entry_list[i], template.protocol, template.budget)

    grasps = [dataset.grasps[e.rows] for e in entry_list]
    results, jit_s, run_s = backend.hold_objects(template, prepare, grasps, progress)
    out = _empty(len(dataset.grasps))
    for e, result in zip(entry_list, results):
        _store(out, e.rows, result)
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
        backend: str | backends.Backend = "mjx",
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
    backend = backends.get(backend, nthread=nthread, chunk=chunk, mesh=mesh)
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
    backend = backends.get(backend, nthread=nthread, chunk=chunk, mesh=mesh)
    rows, jit_s, run_s = run_entries(dataset, entry_list, template, backend, progress)
    return rows, {"jit_s": jit_s, "run_s": run_s}


def build_report(dataset: GraspDataset, protocol: HoldProtocol, backend: str | backends.Backend, rows: dict,
                 timings: dict) -> dict:
    """The report of per-row results `rows` (rows not `done` are left out).

    {"protocol", "backend", "device", "processes", "devices", "objects": {code:
    {"n", "success_rate", "direction_success" [6], "penetration_mm_median",
    "success" [n] in file order}}, "grasps_per_s", "physics_steps_per_s", "jit_s"}.
    Rates are over every process's grasps and the slowest process's time.
    """
    import jax

    backend = backends.get(backend)
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
        "backend": backend.name,
        "device": backend.device_name(),
        "processes": jax.process_count(),
        "devices": backend.device_count(),
        "directions": list(DIRECTION_NAMES),
        "objects": objects,
        "grasps_per_s": n_done / run_s if run_s > 0 else None,
        "physics_steps_per_s": n_done * protocol.total_steps / run_s if run_s > 0 else None,
        "jit_s": timings["jit_s"],
    }
