"""The table-top dataset: (grasp, resting pose) pairs of a grasp dataset, labelled by the lift.

    run_tabletop(TabletopRunConfig(dataset="runs/adapted"), "runs/tabletop")

The target scenario is an object lying on a table, grasped and lifted
(`sim.lift`). What a grasp must avoid there is the table, and where the
table lies, seen from the object, is the up-direction of the object's
resting pose (`sim.resting`): a grasp's clearance does not change with the
yaw about it or with the place on the table. So, per (object, scale):

1. `poses` drops onto the table, settled (`resting.resting_bank`): the
   resting poses and their classes; the last `heldout_poses` of them are
   held out, and so is a `heldout_grasps` fraction of the grasps
   (`refine.split_heldout`).
2. Every grasp meets every resting pose: the table clearance of the hand
   (`pose_sampling.clearance_matrix`, kinematic). A pair whose hand would
   pass through the table is not a table-top grasp and is dropped.
3. Every clear pair is lifted `yaws` times, the pose turned by a random yaw
   each time (the lift protocol, `backend.lift`). `success`: lifted at every
   yaw; `lift_rate`: the fraction that lifted.

Written to `out` (DexGraspNet format, so every tool reads it):
    grasps/<code>.npy      the training pairs (neither pose nor grasp held
                           out), object frame, with labels up_x, up_y, up_z
                           (the pose's up-direction), pose_class, pose_index,
                           grasp_index (row in the source dataset), clearance_m,
                           lift_rate, success, and the source's labels as
                           source_<name> (e.g. source_success: the hold test)
    heldout/               the same for pairs with a held-out pose or grasp
    resting/<code>-s<scale>.npz   the resting poses and classes (`RestingPoses`)
    summary.json           per object and scale: classes and their frequency,
                           pairs clear and lifted per class, train and held out

`diffrl train OUT --set pose_condition=true` trains the pose-conditioned
sampler on its successful pairs. Not jittable: the host loop around the
settle, clearance and lift programs; summary.json is written last.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from diffrl_jax.errors import ConfigError, DataError
from diffrl_jax.files import OutputError
from diffrl_jax.workflows.progress import no_bars

HELDOUT_DIR = "heldout"
RESTING_DIR = "resting"


@dataclasses.dataclass(frozen=True)
class TabletopRunConfig:
    """Every setting of `diffrl tabletop`."""

    dataset: str  # a DexGraspNet-format directory
    # More directories whose grasps join the first's (its meshes serve all;
    # `objects` selects in each, `limit` in the first only); the label
    # source_dataset says which directory a pair's grasp came from.
    extra_datasets: tuple[str, ...] = ()
    protocol: Any = None  # the `lift.LiftProtocol` (None: `lift.DEFAULT`)
    objects: tuple[str, ...] | None = None
    limit: int | None = None  # the first N grasps of each object
    only_success: bool = False  # start only from grasps labelled success (the lift judges them all anyway)
    poses: int = 32  # resting drops per (object, scale)
    yaws: int = 2  # lifts per clear pair, each at a random yaw
    heldout_poses: float = 0.2
    heldout_grasps: float = 0.2
    backend: str = "mujoco"
    threads: int | None = None
    budget_pieces: int = 32
    seed: int = 0

    def validate(self) -> TabletopRunConfig:
        for name in ("poses", "yaws"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("heldout_poses", "heldout_grasps"):
            value = getattr(self, name)
            if not (np.isfinite(value) and 0.0 <= value < 1.0):
                raise ConfigError(f"{name} must lie in [0, 1), got {value!r}")
        if self.heldout_poses > 0 and heldout_pose_count(self.poses, self.heldout_poses) >= self.poses:
            raise ConfigError(f"with {self.poses} poses, holding out {self.heldout_poses} leaves none to train on")
        if self.limit is not None and (isinstance(self.limit, bool) or self.limit < 1):
            raise ConfigError(f"limit must be a positive integer, got {self.limit!r}")
        return self


def heldout_pose_count(n: int, fraction: float) -> int:
    """How many of `n` drops are held out: round(fraction n), at least one when fraction > 0 and n >= 2."""
    count = int(round(fraction * n))
    return max(count, 1) if fraction > 0 and n >= 2 else count


def clear_pairs(clearance: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Clearance [P, N] (m) -> (pose index, grasp index) of the pairs clearing the table, pose-major."""
    pose, grasp = np.nonzero(np.asarray(clearance) >= margin)
    return pose, grasp


def yaw_poses(poses: np.ndarray, yaws: np.ndarray) -> np.ndarray:
    """Resting poses [n, 7] turned by yaws [n] (rad) about the world z axis through the object."""
    half = 0.5 * np.asarray(yaws, np.float64)
    q = np.stack([np.cos(half), np.zeros_like(half), np.zeros_like(half), np.sin(half)], -1)
    from diffrl_jax.data import rotations

    quat = np.asarray(rotations.quat_multiply(q, np.asarray(poses[:, 3:], np.float64)))
    quat /= np.linalg.norm(quat, axis=-1, keepdims=True)
    return np.concatenate([poses[:, :3], quat], -1)


def _entries(dataset) -> list[tuple[str, float, np.ndarray]]:
    """(code, scale, rows) of each (object, scale) group, in dataset order."""
    scales = np.round(dataset.scales, 6)
    out = []
    for k, code in enumerate(dataset.object_codes):
        rows = np.flatnonzero(dataset.object_index == k)
        for scale in sorted(set(scales[rows].tolist())):
            out.append((code, float(scale), rows[scales[rows] == scale]))
    return out


CLEARANCE_CHUNK = 128


@functools.lru_cache(maxsize=4)
def _clearance_program(template):
    import jax

    from diffrl_jax.evaluation import pose_sampling

    return jax.jit(functools.partial(pose_sampling.clearance_matrix, template))


def _clearance(template, grasps, poses):
    return _clearance_program(template)(grasps, poses)


def label_entry(backend, template, prepared, grasps: np.ndarray, config: TabletopRunConfig, seed: int,
                progress: Callable[[int], None] | None = None) -> dict:
    """One (object, scale): its resting bank and every clear pair's labels (see the module docstring).

    Returns {"bank": RestingPoses, "pose", "grasp" [M] (indices into the bank and `grasps`),
    "clearance" [M], "lift_rate" [M], "success" [M] bool, "clear" [P, N] bool, "physics_steps"}.
    """
    import jax.numpy as jnp

    from diffrl_jax.sim import lift, resting

    bank = resting.resting_bank(backend, template, prepared, config.poses, seed=seed)
    # In chunks of CLEARANCE_CHUNK grasps, the last padded: one compiled program for every entry.
    poses = jnp.asarray(bank.poses, jnp.float32)
    clearance = np.zeros((config.poses, len(grasps)))
    for start in range(0, len(grasps), CLEARANCE_CHUNK):
        chunk = grasps[start:start + CLEARANCE_CHUNK]
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], CLEARANCE_CHUNK - len(chunk), 0)])
        clearance[:, start:start + len(chunk)] = np.asarray(
            _clearance(template, jnp.asarray(padded, jnp.float32), poses))[:, :len(chunk)]
    margin = template.protocol.table_margin_m
    pose, grasp = clear_pairs(clearance, margin)
    rng = np.random.default_rng(seed)
    lifted = np.zeros((len(pose), config.yaws), bool)
    if len(pose):
        poses = yaw_poses(np.repeat(bank.poses[pose], config.yaws, 0),
                          rng.uniform(0.0, 2 * np.pi, len(pose) * config.yaws))
        object_grasps = np.repeat(grasps[grasp], config.yaws, 0)
        world = np.asarray(lift.grasp_to_world(jnp.asarray(object_grasps, jnp.float32),
                                               jnp.asarray(poses, jnp.float32)))
        result = backend.lift(template, prepared, poses, world)
        lifted = np.asarray(result.success, bool).reshape(len(pose), config.yaws)
    if progress is not None:
        progress(len(grasps))
    protocol = template.protocol
    return {"bank": bank, "pose": pose, "grasp": grasp, "clearance": clearance[pose, grasp],
            "lift_rate": lifted.mean(axis=1), "success": lifted.all(axis=1), "clear": clearance >= margin,
            "physics_steps": int(config.poses * protocol.settle_steps + lifted.size * protocol.total_steps)}


def _class_table(labels: dict, pose_out: np.ndarray, grasp_out: np.ndarray) -> list[dict]:
    """Per pose class: frequency, training poses, and pairs (clear, lifted) train and held out."""
    bank = labels["bank"]
    pair_class = bank.pose_class[labels["pose"]]
    heldout = pose_out[labels["pose"]] | grasp_out[labels["grasp"]]
    rows = []
    for c in range(bank.num_classes):
        members = bank.pose_class == c
        row = {"up": [round(float(u), 4) for u in bank.class_up[c]],
               "frequency": float(bank.class_frequency[c]),
               "poses": int((members & ~pose_out).sum()), "heldout_poses": int((members & pose_out).sum())}
        for split, mask in (("train", ~heldout), ("heldout", heldout)):
            in_class = (pair_class == c) & mask
            row[f"{split}_clear_pairs"] = int(in_class.sum())
            row[f"{split}_lifted_pairs"] = int((in_class & labels["success"]).sum())
        rows.append(row)
    return rows


def run_tabletop(config: TabletopRunConfig, out, bars: Callable = no_bars) -> dict:
    """Labels every (grasp, resting pose) pair of `config.dataset` into `out`; returns the summary."""
    from diffrl_jax import configs
    from diffrl_jax.data.dexgraspnet import GraspDataset, concatenate, load_dexgraspnet, write_dexgraspnet
    from diffrl_jax.diffusion.train import training_mask
    from diffrl_jax.files import write_json_atomic, write_npz_atomic
    from diffrl_jax.objects import assets
    from diffrl_jax.rl.refine import split_heldout
    from diffrl_jax.sim import backends, bank, lift
    from diffrl_jax.sim.validate import device_name

    config.validate()
    out = pathlib.Path(out)
    if (out / "summary.json").exists():
        raise DataError(f"{out} already holds a table-top dataset (summary.json); choose another --out")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a directory")
    protocol = lift.DEFAULT if config.protocol is None else config.protocol.validate()
    budget = bank.ObjectBudget(pieces=config.budget_pieces).validate()
    objects = None if config.objects is None else list(config.objects)
    dataset = load_dexgraspnet(config.dataset, objects=objects).first_per_object(config.limit)
    if config.extra_datasets:
        extra = [load_dexgraspnet(d) for d in config.extra_datasets]
        if objects is not None:
            extra = [d.select([c for c in d.object_codes if c in objects]) for d in extra]
        dataset = concatenate([dataset, *extra], label="dataset")
    if config.only_success:
        dataset = dataset.take(training_mask(dataset, True))
    backend = backends.get(config.backend, nthread=config.threads)
    template = lift.make_template(protocol, budget)
    grasp_out = split_heldout(dataset.object_index, config.heldout_grasps, config.seed)
    n_out = heldout_pose_count(config.poses, config.heldout_poses)
    pose_out = np.arange(config.poses) >= config.poses - n_out

    records = {"train": [], "heldout": []}  # (rows into the dataset, label dict) per split
    summary_objects, resting_files = {}, {}
    start, steps = time.perf_counter(), 0
    entries = _entries(dataset)
    with bars(f"labelling table-top pairs ({backend.name})", len(dataset), "grasp") as bar:
        for index, (code, scale, rows) in enumerate(entries):
            obj = assets.mesh_object(dataset.mesh_path(code), scale, name=code, max_hull_vertices=budget.vertices)
            prepared = lift.prepare_object(template, obj)
            labels = label_entry(backend, template, prepared, dataset.grasps[rows], config,
                                 seed=config.seed + index, progress=bar.update)
            steps += labels["physics_steps"]
            held = pose_out[labels["pose"]] | grasp_out[rows][labels["grasp"]]
            up = labels["bank"].up[labels["pose"]]
            columns = {"up_x": up[:, 0], "up_y": up[:, 1], "up_z": up[:, 2],
                       "pose_class": labels["bank"].pose_class[labels["pose"]], "pose_index": labels["pose"],
                       "grasp_index": rows[labels["grasp"]], "clearance_m": labels["clearance"],
                       "lift_rate": labels["lift_rate"], "success": labels["success"]}
            columns.update({f"source_{k}": np.asarray(v)[rows][labels["grasp"]] for k, v in dataset.extras.items()})
            for split, mask in (("train", ~held), ("heldout", held)):
                records[split].append((rows[labels["grasp"]][mask], {k: v[mask] for k, v in columns.items()}))
            stem = f"{code}-s{scale:g}"
            resting_files[stem] = labels["bank"].to_arrays()
            n_pairs = len(rows) * config.poses
            summary_objects.setdefault(code, {})[f"{scale:g}"] = {
                "grasps": int(len(rows)), "pairs": int(n_pairs), "clear_pairs": int(len(labels["pose"])),
                "clear_fraction": float(len(labels["pose"]) / n_pairs),
                "train_lifted_pairs": int(labels["success"][~held].sum()),
                "heldout_lifted_pairs": int(labels["success"][held].sum()),
                "lift_rate_of_clear": float(labels["success"].mean()) if len(labels["pose"]) else None,
                "classes": _class_table(labels, pose_out, grasp_out[rows]),
                "resting": f"{RESTING_DIR}/{stem}.npz",
            }
    seconds = time.perf_counter() - start

    def split_dataset(split: str) -> GraspDataset | None:
        parts = records[split]
        rows = np.concatenate([r for r, _ in parts]) if parts else np.zeros(0, int)
        if not len(rows):
            return None
        labels = {k: np.concatenate([cols[k] for _, cols in parts]) for k in parts[0][1]}
        taken = dataset.take(rows)
        return dataclasses.replace(taken, extras=labels)

    written = {}
    for split, root in (("train", out), ("heldout", out / HELDOUT_DIR)):
        part = split_dataset(split)
        written[split] = 0 if part is None else len(part)
        if part is not None:
            part = part.select([c for k, c in enumerate(part.object_codes) if np.any(part.object_index == k)])
            write_dexgraspnet(root, part, mesh_source_root=dataset.root)
    (out / RESTING_DIR).mkdir(parents=True, exist_ok=True)
    for stem, arrays in resting_files.items():
        write_npz_atomic(out / RESTING_DIR / f"{stem}.npz", arrays)
    summary = {
        "source": [str(pathlib.Path(d).resolve()) for d in (config.dataset, *config.extra_datasets)],
        "objects": summary_objects,
        "pairs": {"train": written["train"], "heldout": written["heldout"],
                  "train_lifted": int(sum(np.sum(c["success"]) for _, c in records["train"])),
                  "heldout_lifted": int(sum(np.sum(c["success"]) for _, c in records["heldout"]))},
        "config": {k: v for k, v in dataclasses.asdict(config).items() if k != "protocol"},
        "protocol": configs.to_json(protocol), "backend": backend.name, "device": device_name(backend.name),
        "physics_steps": steps, "seconds": seconds,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "summary.json", summary)  # last: its presence marks a finished dataset
    return summary


def summary_lines(summary: dict) -> list[str]:
    """The lines `diffrl tabletop` prints: per object and scale, then the totals."""
    header = f"{'object':<40} {'scale':>6} {'grasps':>6} {'classes':>7} {'clear':>7} {'lifted':>13}"
    lines = [header, "-" * len(header)]
    for code, scales in summary["objects"].items():
        for scale, s in scales.items():
            lines.append(f"{code[:40]:<40} {scale:>6} {s['grasps']:>6} {len(s['classes']):>7} "
                         f"{s['clear_fraction']:>7.1%} {s['train_lifted_pairs']:>6} + {s['heldout_lifted_pairs']:<4}")
    pairs = summary["pairs"]
    lines.append(f"{pairs['train']} training pairs ({pairs['train_lifted']} lifted), {pairs['heldout']} held out "
                 f"({pairs['heldout_lifted']} lifted); {summary['physics_steps']} physics steps, "
                 f"{summary['seconds']:.0f} s on {summary['device']}")
    return lines


def run_train_scorer(dataset_dir, out, config=None, bars: Callable = no_bars) -> dict:
    """Trains the learned lift score (`evaluation.scorer`, `config` a `ScorerConfig`, None: the
    default) on a table-top dataset into `out`; returns its training record. `out` must not hold a
    scorer yet."""
    from diffrl_jax import checkpoint
    from diffrl_jax.data.dexgraspnet import load_dexgraspnet
    from diffrl_jax.evaluation.scorer import ScorerConfig, auc, dataset_scores, save_scorer, train_scorer

    config = (ScorerConfig() if config is None else config).validate()
    out = pathlib.Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a directory")
    if checkpoint.latest_step(out) is not None:
        raise DataError(f"{out} already holds a scorer; choose another --out")
    dataset = load_dexgraspnet(dataset_dir)
    with bars("training the scorer", config.steps, "step") as bar:
        scorer, record = train_scorer(dataset, config, progress=bar.update)
    heldout = pathlib.Path(dataset_dir) / HELDOUT_DIR
    if (heldout / "grasps").is_dir():  # the pairs of held-out poses and grasps: the scorer never saw them
        pairs = load_dexgraspnet(heldout)
        scores = dataset_scores(scorer, pairs, config)
        labels = np.asarray(pairs.extras["success"]) > 0
        record.update(heldout_pairs=int(len(pairs)), heldout_positives=int(labels.sum()),
                      heldout_auc=auc(scores, labels), heldout_accuracy=float(np.mean((scores > 0) == labels)))
    save_scorer(out, scorer, config, record)
    return record
