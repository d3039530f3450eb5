"""Synthesise grasps on the objects of a mesh directory, as a DexGraspNet-format dataset.

The objects are those of `ROOT/meshdata/` (a DexGraspNet release, the
generated library, imported meshes), each at one or more scales: given
ones, else the library manifest's, else the scales of the object's grasps
in `ROOT/grasps/` (so synthesised grasps are compared with DexGraspNet's at
the same sizes). Each object is simulated as its capped convex pieces, and
the energy sees exactly those. Every object is padded to the job's largest
piece, plane and triangle counts, so one compiled program serves them all.

The output carries DexGraspNet's energy terms as labels (`energy`,
`energy_<term>`); `diffrl validate` then labels holds.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffrl_jax.data import dexgraspnet
from diffrl_jax.data import grasps as grasp_lib
from diffrl_jax.errors import ConfigError, DataError
from diffrl_jax.objects import assets
from diffrl_jax.synthesis import object_sdf, optimize
from diffrl_jax.synthesis.energy import TERMS
from diffrl_jax.workflows.progress import no_bars

@dataclasses.dataclass(frozen=True)
class SynthesisObject:
    code: str
    scale: float
    pieces: tuple[np.ndarray, ...]  # convex pieces in metres, as simulated


def _grasp_scales(root: pathlib.Path, codes: Sequence[str]) -> dict[str, list[float]]:
    """The scales of the grasps in `root/grasps/` of those `codes` that have a grasp file (one load)."""
    with_grasps = [c for c in codes if (root / dexgraspnet.GRASPS_DIR / f"{c}.npy").is_file()]
    if not with_grasps:
        return {}
    data = dexgraspnet.load_dexgraspnet(root, objects=with_grasps)
    return {code: sorted({float(s) for s in data.scales[data.object_index == k]})
            for k, code in enumerate(data.object_codes)}


def mesh_objects(root, codes: Sequence[str] | None = None, scales: Sequence[float] | None = None
                 ) -> list[SynthesisObject]:
    """The (object, scale) pairs of `root/meshdata` to synthesise on."""
    from diffrl_jax.objects import library

    root = pathlib.Path(root)
    meshdata = root / dexgraspnet.MESHDATA_DIR
    if not meshdata.is_dir():
        raise DataError(f"{root} has no {dexgraspnet.MESHDATA_DIR}/ directory of meshes")
    available = sorted(p.name for p in meshdata.iterdir() if dexgraspnet.mesh_path(root, p.name).is_file())
    if codes:
        missing = [c for c in codes if c not in available]
        if missing:
            raise DataError(f"no mesh for {', '.join(missing)} under {meshdata}")
        available = list(codes)
    if not available:
        raise DataError(f"no meshes (meshdata/<code>/coacd/decomposed.obj) under {root}")
    manifest = library.load_library_manifest(root) if (root / "library.json").is_file() else {}
    known = {} if scales else _grasp_scales(root, [c for c in available if c not in manifest])
    objects = []
    for code in available:
        if scales:
            object_scales = list(scales)
        elif code in manifest:
            object_scales = [float(manifest[code]["scale"])]
        elif code in known:
            object_scales = known[code]
        else:
            raise DataError(f"{code}: no scale known (no library.json entry, no grasps/{code}.npy): pass --scale")
        for scale in object_scales:
            obj = assets.mesh_object(dexgraspnet.mesh_path(root, code), scale)
            objects.append(SynthesisObject(code, scale, tuple(p.vertices for p in obj.pieces)))
    return objects


def _padded_sdfs(objects: Sequence[SynthesisObject], num_surface: int) -> list[object_sdf.ObjectSDF]:
    sdfs = [object_sdf.object_sdf(o.pieces, num_surface=num_surface) for o in objects]
    p = max(s.planes.shape[0] for s in sdfs)
    f = max(s.planes.shape[1] for s in sdfs)
    t = max(s.triangles.shape[1] for s in sdfs)

    def pad(a, axis_sizes):
        for axis, size in axis_sizes:
            index = np.arange(size) % a.shape[axis]  # repeats change neither a max nor a min
            a = jnp.take(a, index, axis=axis)
        return a

    return [object_sdf.ObjectSDF(planes=pad(s.planes, [(0, p), (1, f)]),
                                 triangles=pad(s.triangles, [(0, p), (1, t)]), surface=s.surface) for s in sdfs]


def synthesize(objects: Sequence[SynthesisObject], grasps_per_object: int, config: optimize.SynthesisConfig,
               batch: int = 64, chunk: int = 100, seed: int = 0, bars=no_bars, keep: float = 1.0):
    """Synthesised grasps of every object -> (GraspDataset without root, labels, timings).

    Grasps are in the object frame at each object's scale, joints clipped to
    the hand's limits (the energies are those of the clipped grasps).
    `keep` < 1 keeps the lowest-energy fraction of each (object, scale)'s
    `grasps_per_object` (at least one), lowest first: a filter on the
    energy alone, nothing simulated (DexGraspNet too keeps only its
    low-energy results).
    """
    if config.steps % chunk:
        raise ConfigError(f"synthesis steps ({config.steps}) must be a multiple of the chunk ({chunk})")
    if grasps_per_object < 1 or batch < 1:
        raise ConfigError("grasps per object and the batch must be positive")
    if not 0.0 < keep <= 1.0:
        raise ConfigError(f"keep must be a fraction in (0, 1], got {keep}")
    kept = max(1, int(np.ceil(keep * grasps_per_object)))
    sdfs = _padded_sdfs(objects, config.surface_points)
    synthesizer = optimize.make_synthesizer(config, batch, chunk)
    codes = sorted({o.code for o in objects})
    grasps, scales, index, labels = [], [], [], {name: [] for name in ("energy",) + tuple(f"energy_{t}" for t in TERMS)}
    batches = -(-grasps_per_object // batch)
    start = time.perf_counter()
    with bars("synthesis", len(objects) * batches * config.steps, "step") as bar:
        for k, (obj, sdf) in enumerate(zip(objects, sdfs)):
            points, normals = optimize.hull_samples(obj.pieces, 4096, seed=seed)
            points, normals = jnp.asarray(points, jnp.float32), jnp.asarray(normals, jnp.float32)
            found, energies = [], {name: [] for name in labels}
            for b in range(batches):
                key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), k), b)
                state = synthesizer.init(jax.random.fold_in(key, 0), sdf, points, normals)
                for c in range(config.steps // chunk):
                    state = synthesizer.run(jax.random.fold_in(key, c + 1), sdf, state, c * chunk)
                    bar.update(chunk)
                out = grasp_lib.clip_to_joint_limits(np.asarray(state.grasps, np.float64))
                total, terms = synthesizer.energy(sdf, jnp.asarray(out, jnp.float32), state.contacts)
                found.append(out)
                energies["energy"].append(np.asarray(total, np.float64))
                for name in TERMS:
                    energies[f"energy_{name}"].append(np.asarray(terms[name], np.float64))
            energy = np.concatenate(energies["energy"])[:grasps_per_object]
            best = np.argsort(energy, kind="stable")[:kept] if kept < grasps_per_object \
                else np.arange(grasps_per_object)
            grasps.append(np.concatenate(found)[best])
            for name in labels:
                labels[name].append(np.concatenate(energies[name])[best])
            scales.append(np.full(len(best), obj.scale))
            index.append(np.full(len(best), codes.index(obj.code), np.int32))
    seconds = time.perf_counter() - start
    dataset = dexgraspnet.GraspDataset(grasps=np.concatenate(grasps), scales=np.concatenate(scales),
                                       object_index=np.concatenate(index), object_codes=tuple(codes))
    if not np.all(np.isfinite(dataset.grasps)):
        raise DataError("synthesis produced non-finite grasps")  # a bug, not an input: say so loudly
    n = len(dataset)
    synthesised = len(objects) * grasps_per_object
    return dataset, {name: np.concatenate(v) for name, v in labels.items()}, {
        "seconds": seconds, "grasps": n, "synthesised": synthesised, "grasps_per_s": synthesised / seconds,
        "keep": keep, "steps": config.steps, "batch": batch}


def run_synthesize(root, out, codes=None, scales=None, grasps_per_object: int = 64,
                   config: optimize.SynthesisConfig = optimize.SynthesisConfig(), batch: int = 64,
                   chunk: int = 100, seed: int = 0, bars=no_bars, keep: float = 1.0) -> dict:
    """Synthesise on `root`'s meshes and write `out` (DexGraspNet layout, energy labels, the meshes)."""
    from diffrl_jax.files import run_lock, staged_directory

    root, out = pathlib.Path(root).resolve(), pathlib.Path(out).resolve()
    if out == root:
        raise ConfigError("--out must differ from the mesh directory")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not an empty directory")
    objects = mesh_objects(root, codes, scales)
    with run_lock(out):
        dataset, labels, timings = synthesize(objects, grasps_per_object, config, batch, chunk, seed, bars, keep)
        with staged_directory(out) as staging:
            dexgraspnet.write_dexgraspnet(staging, dataset, mesh_source_root=root, labels=labels)
    per_object = {}
    for k, code in enumerate(dataset.object_codes):
        rows = dataset.object_index == k
        per_object[code] = {"n": int(rows.sum()), "scales": sorted({float(s) for s in dataset.scales[rows]}),
                            "median_energy": float(np.median(labels["energy"][rows])),
                            "median_distance_m": float(np.median(labels["energy_distance"][rows])),
                            "median_penetration": float(np.median(labels["energy_penetration"][rows]))}
    return {"out": str(out), "objects": per_object, **timings}
