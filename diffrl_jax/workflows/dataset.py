"""The dataset workflows: grasp proposals for an object (`run_propose`) and the hold test of a
dataset (`run_validate`).

    run_propose(ProposeRunConfig(object="builtin:box", n=64), "runs/raw")
    report = run_validate(ValidateRunConfig(dataset="runs/raw", backend="mujoco"), out="report.json")

`diffrl propose` and `diffrl validate` are their shells, and the pipeline's
dataset and validate stages call them. Not jittable: host-side loops around
the simulator's compiled programs; results are written last and atomically.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

from diffrl_jax.errors import DataError
from diffrl_jax.files import OutputError
from diffrl_jax.workflows.progress import no_bars, warn_stderr


@dataclasses.dataclass(frozen=True)
class ValidateRunConfig:
    """A hold test of every grasp of a DexGraspNet-format directory.

    `hold`: typed overrides of the named protocol's fields (`--set`).
    `groups`/`group_size`: the MJX batch (objects x grasps per compile);
    `threads`: MuJoCo C threads (None: all CPUs).
    """

    dataset: str
    objects: tuple[str, ...] | None = None
    limit: int | None = None  # the first N grasps of each object
    protocol: str = "strict"
    hold: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    backend: str = "mjx"
    budget_pieces: int = 32
    groups: int = 4
    group_size: int = 16
    threads: int | None = None


@dataclasses.dataclass(frozen=True)
class ProposeRunConfig:
    """Grasp proposals for one object: `builtin:NAME` or an OBJ mesh at `scale`.

    Palm poses around the object facing it, the fingers closed in simulation
    until contact; `label` hold-tests them under `protocol` (with `hold`
    overrides) on `backend`.
    """

    object: str
    n: int = 64
    scale: float = 1.0  # OBJ meshes only
    seed: int = 0
    label: bool = True
    protocol: str = "strict"
    hold: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    backend: str = "mujoco"
    budget_pieces: int = 32


def _hold_protocol(name: str, overrides: Mapping[str, Any]):
    from diffrl_jax.sim.protocol import protocol

    return protocol(name, **dict(overrides))


def run_validate(config: ValidateRunConfig, out=None, bars: Callable = no_bars) -> dict | None:
    """Hold-tests `config.dataset`; returns the report (`sim.validate.build_report`).

    `out`: a JSON file the report is written to (its directory must exist).
    Of several JAX processes each tests its share and, with `out`, keeps its
    part beside the report (`<stem>.part-P-of-N.npz`); process 0 merges,
    writes and returns the report, the others return None.
    """
    import jax

    from diffrl_jax import parallel
    from diffrl_jax.data.dexgraspnet import load_dexgraspnet
    from diffrl_jax.files import write_json_atomic, write_npz_atomic
    from diffrl_jax.sim.bank import ObjectBudget
    from diffrl_jax.sim.validate import ChunkConfig, build_report, entries, process_entries, validate_share

    protocol = _hold_protocol(config.protocol, config.hold)
    budget = ObjectBudget(pieces=config.budget_pieces).validate()
    chunk = ChunkConfig(groups=config.groups, group_size=config.group_size).validate()
    out = None if out is None else pathlib.Path(out)
    if out is not None and not out.parent.is_dir():
        raise OutputError(f"directory {out.parent} does not exist")
    dataset = load_dexgraspnet(config.dataset, objects=None if config.objects is None else list(config.objects))
    pid, processes = jax.process_index(), jax.process_count()
    total = sum(len(e.rows) for e in process_entries(entries(dataset, config.limit), chunk.group_size))
    desc = f"validating ({config.backend})" + (f" [process {pid}/{processes}]" if processes > 1 else "")
    with bars(desc, total, "grasp") as bar:
        mine, timings = validate_share(dataset, protocol, backend=config.backend, budget=budget, chunk=chunk,
                                       limit=config.limit, nthread=config.threads, progress=bar.update)
    if processes > 1 and out is not None:  # each process keeps its own part beside the report
        write_npz_atomic(out.with_name(f"{out.stem}.part-{pid}-of-{processes}.npz"),
                         dict(mine, jit_s=timings["jit_s"], run_s=timings["run_s"]))
    rows = parallel.allgather_rows(mine)
    report = build_report(dataset, protocol, config.backend, rows, parallel.allgather_max(timings))
    if pid != 0:
        return None
    if out is not None:
        write_json_atomic(out, report)
    return report


def validation_table(report: dict) -> list[str]:
    """The lines `diffrl validate` prints for a report: per object, then the throughput."""
    header = f"{'object':<48} {'n':>5} {'success':>8} " + " ".join(f"{d:>5}" for d in report["directions"]) \
        + f" {'pen. mm':>8}"
    lines = [header, "-" * len(header)]
    for code, r in report["objects"].items():
        dirs = " ".join(f"{x:>5.2f}" for x in r["direction_success"])
        lines.append(f"{code[:48]:<48} {r['n']:>5} {r['success_rate']:>8.3f} {dirs} "
                     f"{r['penetration_mm_median']:>8.2f}")
    lines.append(f"protocol {report['protocol']['name']}, backend {report['backend']} on {report['device']}: "
                 f"{report['grasps_per_s']:.2f} grasps/s, {report['physics_steps_per_s']:.0f} physics steps/s, "
                 f"jit {report['jit_s']:.1f} s")
    return lines


def _proposal_object(config: ProposeRunConfig, density: float):
    """(asset, code, mesh text, scale) of `config.object`."""
    import numpy as np

    from diffrl_jax.data.example import obj_text, object_mesh_pieces
    from diffrl_jax.objects import assets

    if config.object.startswith("builtin:"):
        name = config.object.split(":", 1)[1]
        obj = assets.builtin_object(name)
        pieces = object_mesh_pieces(obj)
        scale = 1.03 * max(float(np.linalg.norm(p, axis=1).max()) for p in pieces)
        asset = assets.ObjectAsset(f"builtin-{name}", tuple(assets.ConvexPiece(p) for p in pieces), mass=obj.mass)
        return asset, f"builtin-{name}", obj_text([p / scale for p in pieces]), scale
    path = pathlib.Path(config.object)
    if not path.is_file():
        raise DataError(f"{path}: no such mesh file (give builtin:NAME or an OBJ path)")
    if not (config.scale > 0 and np.isfinite(config.scale)):
        raise DataError(f"--scale must be a positive number, got {config.scale}")
    asset = assets.mesh_object(path, config.scale, density=density)
    code = path.parent.parent.name if path.parent.name == "coacd" else path.stem
    return asset, code, path.read_text(), config.scale


def run_propose(config: ProposeRunConfig, out, bars: Callable = no_bars,
                warn: Callable[[str], None] = warn_stderr) -> dict:
    """Proposes `config.n` grasps on one object and writes them into the dataset directory `out`
    (DexGraspNet format, beside any objects already there), with a `success` label unless
    `config.label` is off. Returns {"code", "n", "scale", "out", "success_rate" (None unlabelled)}.
    """
    import numpy as np

    from diffrl_jax.data.dexgraspnet import GraspDataset, load_dexgraspnet, write_dexgraspnet, write_mesh
    from diffrl_jax.scene import build_scene
    from diffrl_jax.sim.bank import ObjectBudget
    from diffrl_jax.sim.propose import propose_grasps
    from diffrl_jax.sim.validate import ChunkConfig, validate_dataset

    protocol = _hold_protocol(config.protocol, config.hold)
    budget = ObjectBudget(pieces=config.budget_pieces).validate()
    asset, code, mesh_text, scale = _proposal_object(config, protocol.physics.object_density)
    out = pathlib.Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a directory")
    warn(f"proposing {config.n} grasps on {code} ...")
    grasps = propose_grasps(build_scene(asset), config.n, seed=config.seed)
    write_mesh(out, code, mesh_text)
    dataset = GraspDataset(grasps=grasps, scales=np.full(len(grasps), scale),
                           object_index=np.zeros(len(grasps), np.int32), object_codes=(code,), root=out)
    labels, rate = None, None
    if config.label:
        with bars(f"labelling ({config.backend})", len(grasps), "grasp") as bar:
            report, rows = validate_dataset(dataset, protocol, backend=config.backend, budget=budget,
                                            chunk=ChunkConfig(), progress=bar.update)
        labels = {"success": rows["success"]}
        rate = float(report["objects"][code]["success_rate"])
        warn(f"{code}: {rate:.3f} of {len(grasps)} proposals hold ({protocol.name})")
    write_dexgraspnet(out, dataset, labels=labels)
    load_dexgraspnet(out, objects=[code])  # the written directory reads back
    return {"code": code, "n": len(grasps), "scale": float(scale), "out": str(out), "success_rate": rate}
