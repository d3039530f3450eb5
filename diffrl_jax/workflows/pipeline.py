"""The DiffusionRL pipeline, end to end: raw grasps -> validate -> refine -> train -> sample -> evaluate.

`run_pipeline(out, config)` runs (or resumes) the stages into a run
directory; `experiments/pipeline.py` (also `diffrl pipeline`) is its shell:

    python experiments/pipeline.py --preset quick --out runs/quick
    diffrl pipeline --preset paper --dataset ../shared/data/dexgraspnet --out runs/paper

The stages, each what one `diffrl` command does, run in this process: each
calls its workflow function (`workflows.dataset`, `.refine`, `.diffusion`,
`.evaluate`) with a typed config. Each stage's stdout.txt starts with the
equivalent `$ diffrl ...` line, so a stage here is exactly what a user runs
by hand:

    dataset   builtin: grasp proposals closed in simulation (`diffrl propose`);
              a DexGraspNet directory is read where it is
    validate  raw success under the scenario's hold protocol (`diffrl validate`)
    refine    PPO adapts the dataset to the scenario (`diffrl refine`)
    tabletop  the raw and adapted grasps on the object's resting poses, the clear
              pairs lifted (`diffrl tabletop`); with `tabletop` off, skipped
    train     the diffusion model on the lifted table-top pairs, conditioned on
              the resting pose (`diffrl train`), and the learned lift score of
              `--select learned` on all its pairs (`diffrl train-scorer`); with
              `tabletop` off, on the adapted grasps without a pose condition
    sample    grasps sampled per object, hold-tested (`diffrl sample`, `diffrl validate`)
    evaluate  pose sampling: objects on a table, sampled grasps lifted (`diffrl evaluate`)
    report    RUN_DIR/summary.json, RUN_DIR/report.md and its plots

RUN_DIR/pipeline.json records the settings and every finished stage with its
seconds. A rerun skips finished stages; an interrupted refine or train stage
continues from its last checkpoint (their own `--resume`); an interrupted
validate, sample or evaluate stage starts again (they write their results
last). Rerunning with other settings is refused.

Not jittable: this is the host-side loop. Each stage's stdout goes to
RUN_DIR/<stage>/stdout.txt, its progress bars to the `bars` callback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import pathlib
import shutil
import time
from collections.abc import Callable, Sequence

from diffrl_jax.errors import ConfigError, DataError
from diffrl_jax.overrides import parse_overrides
from diffrl_jax.workflows import presets
from diffrl_jax.workflows.progress import no_bars

STAGES = ("dataset", "validate", "refine", "tabletop", "train", "sample", "evaluate", "report")
GROUPS = ("hold", "lift", "diffusion", "ppo")  # --set GROUP.FIELD=VALUE
RATE_KEYS = ("raw_success", "adapted_success", "kept_fraction", "sample_success", "pose_sampling_success")
STATE_FILE = "pipeline.json"


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Every setting of a pipeline run; a preset is one of these, `--set FIELD=VALUE` edits it."""

    dataset: str = "builtin"  # "builtin" or a DexGraspNet-format directory
    objects: tuple[str, ...] = ("cylinder", "box", "sphere")  # built-in names, or codes of the directory
    proposals: int = 256  # grasps proposed per built-in object
    limit: int | None = None  # first N grasps of each object of a directory
    scenario: str = "default"  # the target scenario (see `diffrl refine --scenario`)
    protocol: str = "strict"  # hold-test protocol of validate/refine/sample
    backend: str = "mujoco"  # simulator of validate, refine, sample and evaluate
    budget_pieces: int = 32  # convex pieces per object in the compiled programs
    refine_preset: str = "cpu"  # `diffrl refine --preset`
    refine_iterations: int = 30
    refine_block: int | None = None  # PPO iterations per compiled block and checkpoint (None: the refine preset's)
    refine_envs: int = 128
    refine_attempts: int = 8  # episodes per grasp when adapting
    # Corrections per episode (`diffrl refine --steps`), each after the first
    # from the grasp where the last hold test's settle left it.
    refine_steps: int = 3
    # Noise added to the sampled attempts' actions (`diffrl refine --explore`);
    # None: the refine preset's (per step, `presets.REFINE_PRESETS`), which
    # summary.json records as `refine_explore`.
    refine_explore: float | None = None
    # Perturbed copies per kept grasp for the "robustness" label (`diffrl
    # refine --robustness`; 0: none), and the label the diffusion model's
    # training grasps need (`diffrl train --min-robustness`; 0: all). On the
    # shared data adapted with 32 attempts and exploration, DDIM-10 samples
    # held at 0.45-0.60 trained on every kept grasp, 0.75-0.77 on those with
    # robustness >= 0.375 and 0.75-0.93 on those >= 0.5 (8 copies); on the
    # 8-attempt data at 0.60-0.83, 0.85-0.93 (>= 0.5, 8 copies) and 0.95-0.97
    # (>= 0.5, 16 copies: a less noisy label). Off in the quick preset: its
    # cylinder and box keep only 5-14 grasps each.
    refine_robustness: int = 0
    train_min_robustness: float = 0.0
    # The table-top pairs (`diffrl tabletop`) of the raw and adapted grasps:
    # the model trains on the pairs that lifted and samples for each resting
    # pose. On the quick preset's grasps this took one-shot success from
    # 0.07 to 0.32 (docs/tabletop.md). Off: the model trains on the adapted
    # grasps and knows nothing of the table.
    tabletop: bool = True
    # Resting drops per object and scale, and lifts per clear pair at random
    # yaws: with 16 drops and 2 yaws the quick preset's cylinder kept no lifted
    # training pair (its few lifted pairs fell in held-out poses); more poses
    # at one yaw cost about the same lifts and cover more pose classes.
    tabletop_poses: int = 32
    tabletop_yaws: int = 1
    train_steps: int = 3000
    train_batch: int = 256
    sample_n: int = 128  # sampled grasps per object, hold-tested
    eval_poses: int = 50  # resting poses per object
    # Sampled grasps per pose: most put the hand through the table. 16 left
    # 64-72% of poses without a clear one; 1024 left at most 8%.
    eval_candidates: int = 1024
    eval_select: str = "check"  # `diffrl evaluate --select`: one of `evaluation.selections.SELECTIONS`
    # Further modes evaluated on the same poses and samples (`--select check one-shot`):
    # one-shot is the sampler used as it is, nothing simulated or rejected.
    eval_compare: tuple[str, ...] = ("one-shot",)
    eval_check_top: int = 32  # candidates hold-tested per pose with "check"
    videos: int = 1  # mp4s of successes and of failures per object (0: none)
    seed: int = 0
    # FIELD=VALUE overrides given as `--set GROUP.FIELD=VALUE`: of the hold
    # protocol (validate, refine, sample; after the scenario's), the lift
    # protocol (evaluate), the DiffusionConfig (train) and the PPOConfig (refine).
    hold: tuple[str, ...] = ()
    lift: tuple[str, ...] = ()
    diffusion: tuple[str, ...] = ()
    ppo: tuple[str, ...] = ()

    def validate(self) -> PipelineConfig:
        if self.scenario not in presets.SCENARIOS:
            raise ConfigError(f"scenario must be one of {sorted(presets.SCENARIOS)}, got {self.scenario!r}")
        if self.refine_preset not in presets.REFINE_PRESETS:
            raise ConfigError(f"refine_preset must be one of {sorted(presets.REFINE_PRESETS)}, "
                              f"got {self.refine_preset!r}")
        from diffrl_jax.sim import backends

        if self.backend not in backends.NAMES:
            raise ConfigError(f"backend must be one of {' or '.join(backends.NAMES)}, got {self.backend!r}")
        if self.protocol not in ("strict", "dexgraspnet"):
            raise ConfigError(f"protocol must be strict or dexgraspnet, got {self.protocol!r}")
        for name in ("proposals", "budget_pieces", "refine_iterations", "refine_envs", "refine_attempts",
                     "refine_steps", "train_steps", "train_batch", "sample_n", "eval_poses", "eval_candidates",
                     "eval_check_top", "tabletop_poses", "tabletop_yaws"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        from diffrl_jax.evaluation.selections import SELECTIONS, check_modes

        if self.eval_select not in SELECTIONS:
            raise ConfigError(f"eval_select must be one of {', '.join(SELECTIONS)}; got {self.eval_select!r}")
        check_modes(self.eval_select, tuple(self.eval_compare), "pipeline eval")
        if not isinstance(self.tabletop, bool):
            raise ConfigError(f"tabletop must be true or false, got {self.tabletop!r}")
        if "learned" in (self.eval_select, *self.eval_compare) and not self.tabletop:
            raise ConfigError("the learned selection needs the table-top pairs to learn from: set tabletop=true, "
                              "or leave learned out of eval_select and eval_compare")
        if self.tabletop and self.tabletop_poses < 2:
            raise ConfigError(f"tabletop_poses must be at least 2 (a fifth is held out), got {self.tabletop_poses}")
        if self.refine_block is not None and not (isinstance(self.refine_block, int) and self.refine_block >= 1):
            raise ConfigError(f"refine_block must be a positive integer or none, got {self.refine_block!r}")
        if self.refine_explore is not None and not (
                isinstance(self.refine_explore, (int, float)) and math.isfinite(self.refine_explore)
                and self.refine_explore >= 0):
            raise ConfigError(f"refine_explore must be a finite number >= 0, got {self.refine_explore!r}")
        if not (isinstance(self.refine_robustness, int) and self.refine_robustness >= 0):
            raise ConfigError(f"refine_robustness must be an integer >= 0, got {self.refine_robustness!r}")
        if not (isinstance(self.train_min_robustness, (int, float))
                and 0.0 <= self.train_min_robustness <= 1.0):
            raise ConfigError(f"train_min_robustness must lie in [0, 1], got {self.train_min_robustness!r}")
        if self.train_min_robustness > 0 and self.refine_robustness == 0:
            raise ConfigError("train_min_robustness needs the robustness label: set refine_robustness > 0")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be a positive integer, got {self.limit!r}")
        if self.videos < 0:
            raise ConfigError(f"videos must be >= 0, got {self.videos!r}")
        if self.dataset == "builtin":
            from diffrl_jax.objects.assets import BUILTIN_OBJECTS

            unknown = [o for o in self.objects if o not in BUILTIN_OBJECTS]
            if unknown or not self.objects:
                raise ConfigError(f"built-in objects must be among {sorted(BUILTIN_OBJECTS)}, got "
                                  f"{list(self.objects)}")
        return self

    def replace(self, **overrides) -> PipelineConfig:
        return dataclasses.replace(self, **overrides)

    def with_assignments(self, assignments: dict[str, str]) -> PipelineConfig:
        """`{"train_steps": "500", "objects": "box,sphere"}` -> a config with those fields."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        out = {}
        for name, text in assignments.items():
            group, _, field = name.partition(".")
            if group in GROUPS and field:
                out[group] = out.get(group, getattr(self, group)) + (f"{field}={text}",)
                continue
            if name not in fields or name in GROUPS:
                raise ConfigError(f"--set: unknown pipeline field {name!r}; fields: {', '.join(fields)}, "
                                  "or GROUP.FIELD for GROUP in " + ", ".join(GROUPS))
            out.update(parse_overrides(PipelineConfig, {name: text}, "pipeline"))
        return self.replace(**out)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        for name in ("objects", "eval_compare", *GROUPS):
            d[name] = list(getattr(self, name))
        return d


PRESETS = {
    # The README's main job: built-in objects, MuJoCo's C engine; 12.5
    # minutes on a busy 2-core CPU from a cold compilation cache.
    # With the pose condition most samples clear the table (56-74%), so 256
    # candidates and a check of 16 leave no pose without a clear one.
    # 20 PPO iterations and 6 attempts (the defaults: 30 and 8) keep it under 15
    # minutes with 32 table-top drops: the refine stage took 571 s of its 15 min
    # 44 s at the defaults and 16 drops.
    "quick": PipelineConfig(refine_iterations=20, refine_attempts=6, eval_candidates=256, eval_check_top=16,
                            eval_compare=("one-shot", "first", "learned")),
    # The three shared DexGraspNet objects (--dataset DIR), 100 poses each, on a
    # CPU with MuJoCo's C engine: the refine preset's PPO, then every raw and
    # adapted grasp on 32 resting poses per object and scale.
    "paper": PipelineConfig(dataset="", objects=(), backend="mujoco", refine_preset="cpu",
                            train_steps=5000, sample_n=256, tabletop_poses=32,
                            eval_compare=("one-shot", "first", "learned"),
                            eval_poses=100, eval_candidates=256, eval_check_top=16, videos=2),
    # The same objects with MJX on one GPU: a larger PPO run, robustness labels.
    "paper-gpu": PipelineConfig(dataset="", objects=(), backend="mjx", refine_preset="gpu",
                                refine_iterations=60, refine_envs=1024, refine_attempts=128,
                                refine_robustness=16, train_min_robustness=0.5,
                                train_steps=20000, train_batch=1024, sample_n=1024, tabletop_poses=32,
                                eval_compare=("one-shot", "first", "learned"),
                                eval_poses=100, eval_candidates=1024, eval_check_top=32, videos=2),
}


def config_from(preset: str, dataset: str | None, objects: Sequence[str] | None,
                assignments: dict[str, str]) -> PipelineConfig:
    """The run's config: a preset, then `--dataset`/`--objects`, then `--set` fields."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    config = PRESETS[preset]
    if dataset is not None:
        config = config.replace(dataset=dataset if dataset == "builtin" else str(pathlib.Path(dataset).resolve()),
                                objects=() if dataset != "builtin" else config.objects)
    if objects:
        config = config.replace(objects=tuple(objects))
    config = config.with_assignments(assignments)
    if not config.dataset:
        raise ConfigError(f"the {preset} preset needs --dataset DIR (a DexGraspNet-format directory, "
                          "e.g. ../shared/data/dexgraspnet)")
    if config.dataset != "builtin" and not pathlib.Path(config.dataset).is_dir():
        raise DataError(f"--dataset {config.dataset}: no such directory")
    return config.validate()


# --- the stages ---------------------------------------------------------------------------------


class Run:
    """A pipeline run directory: its config, its finished stages, its files."""

    def __init__(self, out, config: PipelineConfig, bars: Callable = no_bars):
        self.out = pathlib.Path(out)
        self.config = config
        self.state = {"config": config.to_json(), "stages": {}}
        self.bars = bars

    @property
    def raw(self) -> pathlib.Path:
        return self.out / "raw" if self.config.dataset == "builtin" else pathlib.Path(self.config.dataset)

    def path(self, *parts) -> pathlib.Path:
        return self.out.joinpath(*parts)

    def open(self) -> None:
        """Creates RUN_DIR, or checks that the run in it has this config."""
        from diffrl_jax.files import write_json_atomic

        state_path = self.path(STATE_FILE)
        if state_path.is_file():
            try:
                previous = json.loads(state_path.read_text())
                saved = previous["config"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DataError(f"{state_path} is not a pipeline state file; choose another --out") from None
            if saved != self.state["config"]:
                changed = sorted(k for k in self.state["config"] if saved.get(k) != self.state["config"][k])
                raise ConfigError(f"{self.out} holds a pipeline run with other settings (differs in: "
                                  f"{', '.join(changed)}); use the same preset and options, or a new --out")
            self.state = previous
        elif self.out.exists() and (not self.out.is_dir() or any(self.out.iterdir())):
            raise DataError(f"{self.out} exists and is not an empty directory nor a pipeline run")
        self.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(state_path, self.state)

    def done(self, stage: str) -> bool:
        return bool(self.state["stages"].get(stage, {}).get("done"))

    def record(self, stage: str, seconds: float, done: bool) -> None:
        from diffrl_jax.files import write_json_atomic

        entry = self.state["stages"].setdefault(stage, {"seconds": 0.0, "attempts": 0})
        entry["seconds"] += seconds
        entry["attempts"] += 1
        entry["done"] = done
        write_json_atomic(self.path(STATE_FILE), self.state)

    def call(self, stage: str, argv: list[str], run: Callable[[], object]) -> None:
        """`run()` with its stdout appended to RUN_DIR/<stage>/stdout.txt, after the line
        `$ diffrl ARGV` (the equivalent command, which a user can run by hand)."""
        from diffrl_jax.files import append_log

        log_dir = self.path(stage)
        log_dir.mkdir(parents=True, exist_ok=True)
        with append_log(log_dir / "stdout.txt") as log, contextlib.redirect_stdout(log):
            print(f"$ diffrl {' '.join(argv)}", flush=True)
            run()

    def refine_config(self):
        """The refine stage's `RefineRunConfig` (what `refine_argv` says on the command line)."""
        from diffrl_jax.rl.ppo import PPOConfig
        from diffrl_jax.sim.protocol import HoldProtocol
        from diffrl_jax.workflows.refine import RefineRunConfig

        c = self.config
        return RefineRunConfig(
            dataset=str(self.raw), objects=tuple(c.objects) if c.dataset != "builtin" and c.objects else None,
            limit=c.limit, scenario=c.scenario, protocol=c.protocol,
            hold=_typed(HoldProtocol, self._hold_items(), "protocol"), preset=c.refine_preset,
            backend=c.backend, iterations=c.refine_iterations, block=c.refine_block, envs=c.refine_envs,
            steps=c.refine_steps,
            attempts=c.refine_attempts, explore=None if c.refine_explore is None else (float(c.refine_explore),),
            robustness=c.refine_robustness, ppo=_typed(PPOConfig, c.ppo, "PPO config"), seed=c.seed,
            budget_pieces=c.budget_pieces, resume=True)

    def refine_argv(self) -> list[str]:
        """`diffrl refine ...` equivalent to the refine stage's call (printed as its record)."""
        c = self.config
        return ["refine", str(self.raw), "--out", str(self.path("refine")), "--resume",
                "--scenario", c.scenario, "--protocol", c.protocol, "--preset", c.refine_preset,
                "--backend", c.backend, "--iterations", str(c.refine_iterations),
                "--envs", str(c.refine_envs), "--attempts", str(c.refine_attempts),
                "--steps", str(c.refine_steps),
                *(["--block", str(c.refine_block)] if c.refine_block is not None else []),
                *(["--explore", str(c.refine_explore)] if c.refine_explore is not None else []),
                "--robustness", str(c.refine_robustness),
                "--seed", str(c.seed), "--budget-pieces", str(c.budget_pieces), *self._selection(),
                *_options("--set", self._hold_items()), *_options("--ppo", c.ppo)]

    # Object codes of the raw dataset, in order.
    def codes(self) -> list[str]:
        if self.config.dataset == "builtin":
            return [f"builtin-{name}" for name in self.config.objects]
        from diffrl_jax.data.dexgraspnet import load_dexgraspnet

        return list(load_dexgraspnet(self.raw, objects=list(self.config.objects) or None).object_codes)

    def _selection(self) -> list[str]:
        c = self.config
        args = []
        if c.dataset != "builtin" and c.objects:
            args += ["--objects", *c.objects]
        if c.limit is not None:
            args += ["--limit", str(c.limit)]
        return args

    def _hold_items(self) -> list[str]:
        """FIELD=VALUE of the hold protocol: the scenario's fields, then `hold.FIELD` overrides."""
        scenario = presets.SCENARIOS[self.config.scenario]
        return [f"{k}={v}" for k, v in scenario.items()] + list(self.config.hold)

    def _hold_sets(self) -> list[str]:
        """--set options of the hold protocol (`_hold_items`)."""
        return _options("--set", self._hold_items())

    def _lift_items(self) -> list[str]:
        """FIELD=VALUE of the lift protocol: the scenario's fields it has, then `lift.FIELD` overrides."""
        from diffrl_jax.sim.lift import LiftProtocol

        names = {f.name for f in dataclasses.fields(LiftProtocol)}
        items = [f"{k}={v}" for k, v in presets.SCENARIOS[self.config.scenario].items() if k in names]
        return items + list(self.config.lift)

    def _lift_sets(self) -> list[str]:
        """--set options of the lift protocol (`_lift_items`)."""
        return _options("--set", self._lift_items())


def _options(flag: str, items) -> list[str]:
    return [x for item in items for x in (flag, item)]


def _typed(config, items, what: str) -> dict:
    """FIELD=VALUE strings (as `with_assignments` collects them) -> typed overrides of `config`."""
    pairs = (item.split("=", 1) for item in items)
    return parse_overrides(config, {k.strip(): v.strip() for k, v in pairs}, what)


def stage_dataset(run: Run) -> None:
    from diffrl_jax.workflows.dataset import run_propose

    c = run.config
    if c.dataset != "builtin":
        run.codes()  # the directory loads (clear errors otherwise); nothing is copied
        return
    from diffrl_jax.files import staged_directory

    with staged_directory(run.raw) as staging:
        for k, name in enumerate(c.objects):
            config = propose_config(run, name, k)

            def propose(config=config):
                result = _locked(staging, "diffrl propose", lambda: run_propose(config, staging, bars=run.bars))
                print(f"wrote {result['n']} grasps of {result['code']} to {result['out']}")

            run.call("dataset", propose_argv(config, staging), propose)


def propose_config(run: Run, name: str, k: int):
    """The dataset stage's `ProposeRunConfig` of built-in object `name` (the `k`-th)."""
    from diffrl_jax.workflows.dataset import ProposeRunConfig

    c = run.config
    return ProposeRunConfig(object=f"builtin:{name}", n=c.proposals, seed=c.seed + k, label=False)


def propose_argv(config, out) -> list[str]:
    """`diffrl propose ...` equivalent to a dataset stage call of `config` (printed as its record)."""
    return ["propose", "--object", config.object, "--n", str(config.n), "--out", str(out),
            "--seed", str(config.seed), "--no-label"]


def validate_config(run: Run, dataset, selection: bool = True):
    """The `ValidateRunConfig` of a hold test of `dataset` under the run's protocol (what
    `validate_argv` says); `selection`: the run's --objects/--limit (the raw dataset's)."""
    from diffrl_jax.sim.protocol import HoldProtocol
    from diffrl_jax.workflows.dataset import ValidateRunConfig

    c = run.config
    objects = tuple(c.objects) if selection and c.dataset != "builtin" and c.objects else None
    return ValidateRunConfig(dataset=str(dataset), objects=objects, limit=c.limit if selection else None,
                             protocol=c.protocol, hold=_typed(HoldProtocol, run._hold_items(), "protocol"),
                             backend=c.backend, budget_pieces=c.budget_pieces)


def validate_argv(run: Run, dataset, out, selection: bool = True) -> list[str]:
    """`diffrl validate ...` equivalent to `validate_config` (printed as its record)."""
    c = run.config
    return ["validate", str(dataset), "--backend", c.backend, "--protocol", c.protocol,
            "--budget-pieces", str(c.budget_pieces), *(run._selection() if selection else []),
            *run._hold_sets(), "--out", str(out)]


def _validate(run: Run, stage: str, dataset, selection: bool = True) -> None:
    """The hold test of `dataset` into RUN_DIR/<stage>/report.json, as `diffrl validate` runs it."""
    from diffrl_jax.workflows.dataset import run_validate, validation_table

    config, out = validate_config(run, dataset, selection), run.path(stage, "report.json")
    out.parent.mkdir(parents=True, exist_ok=True)

    def validate():
        report = _locked(out, "diffrl validate", lambda: run_validate(config, out=out, bars=run.bars))
        if report is not None:
            print("\n".join(validation_table(report)))

    run.call(stage, validate_argv(run, dataset, out, selection), validate)


def stage_validate(run: Run) -> None:
    _validate(run, "validate", run.raw)


def stage_refine(run: Run) -> None:
    from diffrl_jax.files import run_lock, write_errors_reported
    from diffrl_jax.workflows.refine import run_refine, summary_table

    config, out = run.refine_config(), run.path("refine")

    def refine():
        # As `diffrl refine` runs: under the lock on its --out (covered by the run's).
        with write_errors_reported(), run_lock(out, "diffrl refine"):
            result = run_refine(config, out, bars=run.bars)
        print("\n".join(summary_table(result)))

    run.call("refine", run.refine_argv(), refine)
    if not (run.path("refine", "adapted") / "grasps").is_dir():
        raise DataError("the refiner kept no grasp of any object: there is nothing to train the diffusion "
                        f"model on (see {run.path('refine', 'summary.json')}); try more proposals or "
                        "refine iterations")


def tabletop_config(run: Run):
    """The tabletop stage's `TabletopRunConfig` (what `tabletop_argv` says on the command line): the raw
    grasps (the run's --objects/--limit) and the adapted ones, on the lift protocol of the evaluation."""
    from diffrl_jax.workflows.tabletop import TabletopRunConfig

    c = run.config
    return TabletopRunConfig(
        dataset=str(run.raw), extra_datasets=(str(run.path("refine", "adapted")),), protocol=_lift_protocol(run),
        objects=tuple(c.objects) if c.dataset != "builtin" and c.objects else None, limit=c.limit,
        poses=c.tabletop_poses, yaws=c.tabletop_yaws, backend=c.backend,
        budget_pieces=c.budget_pieces, seed=c.seed)


def tabletop_argv(run: Run) -> list[str]:
    """`diffrl tabletop ...` equivalent to the tabletop stage's call (printed as its record)."""
    c = run.config
    return ["tabletop", str(run.raw), str(run.path("refine", "adapted")), "--out", str(run.path("tabletop")),
            *run._selection(), "--poses", str(c.tabletop_poses), "--yaws", str(c.tabletop_yaws),
            "--backend", c.backend, "--budget-pieces", str(c.budget_pieces), "--seed", str(c.seed),
            *run._lift_sets()]


def stage_tabletop(run: Run) -> None:
    if not run.config.tabletop:
        return
    from diffrl_jax.workflows.tabletop import run_tabletop, summary_lines

    out = run.path("tabletop")
    if not (out / "summary.json").is_file():  # an interrupted labelling starts again
        shutil.rmtree(out, ignore_errors=True)

        def tabletop():
            summary = _locked(out, "diffrl tabletop", lambda: run_tabletop(tabletop_config(run), out, bars=run.bars))
            print("\n".join(summary_lines(summary)))

        run.call("tabletop", tabletop_argv(run), tabletop)
    summary = json.loads((out / "summary.json").read_text())
    if not summary["pairs"]["train_lifted"]:
        raise DataError(f"no grasp lifted in any training pose (see {out / 'summary.json'}): there is nothing to "
                        "train the pose-conditioned model on; try more proposals, or --set tabletop=false")


def _lift_protocol(run: Run):
    from diffrl_jax.sim import lift

    return lift.DEFAULT.replace(**_typed(lift.LiftProtocol, run._lift_items(), "lift protocol"))


def _train_dataset(run: Run) -> pathlib.Path:
    return run.path("tabletop") if run.config.tabletop else run.path("refine", "adapted")


def trained_codes(run: Run) -> list[str]:
    """The objects the diffusion model was trained on (its checkpoint's record)."""
    from diffrl_jax import checkpoint

    return list(checkpoint.load_config(run.path("train"))["dataset"]["object_codes"])


def _locked(out, what: str, fn: Callable[[], object]):
    """`fn()` as `diffrl` runs a command: under the lock on its output (covered by the run's),
    a write the disk refuses reported as `OutputError`."""
    from diffrl_jax.files import run_lock, write_errors_reported

    with write_errors_reported(), run_lock(out, what):
        return fn()


def train_argv(run: Run) -> list[str]:
    """`diffrl train ...` equivalent to the train stage's call (printed as its record)."""
    c = run.config
    return ["train", str(_train_dataset(run)), "--out", str(run.path("train")),
            "--steps", str(c.train_steps), "--batch", str(c.train_batch), "--seed", str(c.seed),
            *_options("--set", _train_sets(c)), "--resume",
            *(["--min-robustness", str(c.train_min_robustness)] if c.train_min_robustness else [])]


def _train_sets(c: PipelineConfig) -> list[str]:
    return [f"warmup_steps={min(200, c.train_steps // 10)}", f"block_steps={min(100, c.train_steps)}",
            f"checkpoint_every={max(100, c.train_steps // 5)}", *(["pose_condition=true"] if c.tabletop else []),
            *c.diffusion]


def train_config(run: Run):
    """The train stage's `TrainRunConfig` (what `train_argv` says on the command line)."""
    from diffrl_jax.diffusion.config import DiffusionConfig
    from diffrl_jax.workflows.diffusion import TrainRunConfig

    c = run.config
    return TrainRunConfig(
        dataset=str(_train_dataset(run)), steps=c.train_steps, batch=c.train_batch, seed=c.seed,
        min_robustness=float(c.train_min_robustness) if c.train_min_robustness else None,
        diffusion=_typed(DiffusionConfig, _train_sets(c), "diffusion config"), resume=True)


def stage_train(run: Run) -> None:
    from diffrl_jax import checkpoint
    from diffrl_jax.workflows.diffusion import run_train, train_message

    out = run.path("train")

    def train():
        print(train_message(_locked(out, "diffrl train", lambda: run_train(train_config(run), out, bars=run.bars))))

    run.call("train", train_argv(run), train)
    if not run.config.tabletop:
        return
    from diffrl_jax.workflows.tabletop import run_train_scorer

    scorer = run.path("train-scorer")
    if checkpoint.latest_step(scorer) is None:  # an interrupted scorer training starts again
        shutil.rmtree(scorer, ignore_errors=True)

        def train_scorer():
            record = _locked(scorer, "diffrl train-scorer",
                             lambda: run_train_scorer(run.path("tabletop"), scorer, scorer_config(run), run.bars))
            print(f"scorer trained on {record['pairs']} pairs ({record['positives']} lifted): "
                  f"training accuracy {record['train_accuracy']:.3f}")

        run.call("train", scorer_argv(run), train_scorer)


def scorer_config(run: Run):
    """The train stage's `ScorerConfig`: the object encoding of the diffusion model's config."""
    from diffrl_jax.diffusion.config import DiffusionConfig
    from diffrl_jax.evaluation.scorer import ScorerConfig

    d = DiffusionConfig(**{k: v for k, v in train_config(run).diffusion.items()
                           if k in {f.name for f in dataclasses.fields(DiffusionConfig)}})
    return ScorerConfig(encoding_points=d.encoding_points, encoding_radius=d.encoding_radius,
                        encoding_samples=d.encoding_samples, seed=run.config.seed)


def scorer_argv(run: Run) -> list[str]:
    """`diffrl train-scorer ...` equivalent to the train stage's scorer call (printed as its record)."""
    s = scorer_config(run)
    return ["train-scorer", str(run.path("tabletop")), "--out", str(run.path("train-scorer")),
            "--set", f"encoding_points={s.encoding_points}", "--set", f"encoding_radius={s.encoding_radius}",
            "--set", f"encoding_samples={s.encoding_samples}", "--set", f"seed={s.seed}"]


def sample_argv(run: Run, code: str) -> list[str]:
    """`diffrl sample ...` equivalent to the sample stage's call for object `code`."""
    c = run.config
    return ["sample", str(run.path("train")), "--object", code, "--n", str(c.sample_n),
            "--seed", str(c.seed), "--out", str(run.path("sample", "grasps"))]


def sample_config(run: Run, code: str):
    """The sample stage's `SampleRunConfig` for object `code` (what `sample_argv` says)."""
    from diffrl_jax.workflows.diffusion import SampleRunConfig

    c = run.config
    return SampleRunConfig(checkpoint=str(run.path("train")), object=code, n=c.sample_n, seed=c.seed)


def stage_sample(run: Run) -> None:
    from diffrl_jax.workflows.diffusion import run_sample, sample_message

    samples = run.path("sample", "grasps")
    shutil.rmtree(samples, ignore_errors=True)
    for code in trained_codes(run):
        def sample(code=code):
            summary = _locked(samples, "diffrl sample",
                              lambda: run_sample(sample_config(run, code), samples, bars=run.bars))
            print(sample_message(summary))

        run.call("sample", sample_argv(run, code), sample)
    _validate(run, "sample", samples, selection=False)


def evaluate_argv(run: Run) -> list[str]:
    """`diffrl evaluate ...` equivalent to the evaluate stage's call (printed as its record)."""
    c = run.config
    return ["evaluate", str(run.path("train")), "--out", str(run.path("evaluate")), "--objects",
            *trained_codes(run), "--poses", str(c.eval_poses), "--candidates", str(c.eval_candidates),
            "--select", c.eval_select, *c.eval_compare, "--check-top", str(c.eval_check_top), "--backend", c.backend,
            "--budget-pieces", str(c.budget_pieces), "--seed", str(c.seed), "--videos", str(c.videos),
            *(["--scorer", str(run.path("train-scorer"))] if _uses_scorer(c) else []), *run._lift_sets()]


def _uses_scorer(c: PipelineConfig) -> bool:
    return "learned" in (c.eval_select, *c.eval_compare)


def evaluate_config(run: Run):
    """The evaluate stage's `EvaluateRunConfig` (what `evaluate_argv` says on the command line)."""
    from diffrl_jax.workflows.evaluate import EvaluateRunConfig

    c = run.config
    protocol = _lift_protocol(run)
    return EvaluateRunConfig(
        checkpoint=str(run.path("train")), protocol=protocol, objects=tuple(trained_codes(run)),
        poses=c.eval_poses, candidates=c.eval_candidates, select=c.eval_select, compare=tuple(c.eval_compare),
        check_top=c.eval_check_top,
        backend=c.backend, budget_pieces=c.budget_pieces, seed=c.seed, videos=c.videos,
        scorer=str(run.path("train-scorer")) if _uses_scorer(c) else None)


def stage_evaluate(run: Run) -> None:
    from diffrl_jax.workflows.evaluate import run_evaluate, summary_lines

    out = run.path("evaluate")
    shutil.rmtree(out, ignore_errors=True)  # an interrupted evaluation starts again

    def evaluate():
        summary = _locked(out, "diffrl evaluate", lambda: run_evaluate(evaluate_config(run), out, bars=run.bars))
        print("\n".join(summary_lines(summary, out)))

    run.call("evaluate", evaluate_argv(run), evaluate)


# --- the report ---------------------------------------------------------------------------------


def _read(path) -> dict | None:
    path = pathlib.Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def collect(run: Run) -> dict:
    """RUN_DIR's stage outputs -> the summary (see the module docstring of `diffrl pipeline`)."""
    from diffrl_jax.sim.validate import device_name

    validate = _read(run.path("validate", "report.json")) or {"objects": {}}
    refine = _read(run.path("refine", "summary.json")) or {"objects": {}}
    sample = _read(run.path("sample", "report.json")) or {"objects": {}}
    evaluate = _read(run.path("evaluate", "summary.json")) or {"objects": {}}
    tabletop = _read(run.path("tabletop", "summary.json")) or {"objects": {}}
    objects = {}
    for code in run.codes():
        r = refine["objects"].get(code, {})
        e = evaluate["objects"].get(code)
        t = list(tabletop["objects"].get(code, {}).values())  # one entry per scale
        objects[code] = {
            # Table-top pairs (grasp, resting pose) that lifted in training poses; the share of all
            # pairs whose hand clears the table.
            "tabletop_lifted_pairs": sum(x["train_lifted_pairs"] for x in t) if t else None,
            "tabletop_clear_fraction": (sum(x["clear_pairs"] for x in t) / sum(x["pairs"] for x in t)) if t else None,
            "raw_success": validate["objects"].get(code, {}).get("success_rate"),
            "adapted_success": r.get("adapted_success"),
            "kept_fraction": r.get("kept_fraction"),
            "sample_success": sample["objects"].get(code, {}).get("success_rate"),
            "pose_sampling_success": e["rate"] if e else None,
            "pose_sampling_ci95": [e["ci_low"], e["ci_high"]] if e else None,
            "n_raw": validate["objects"].get(code, {}).get("n"),
            "n_poses": e["n"] if e else None,
            # Every selection mode that ran, on the same poses and samples: success, ci95,
            # n_poses, physics_steps_choosing (`pose_sampling.evaluate_object`).
            "pose_sampling": {mode: {k: m[k] for k in ("success", "ci95", "n_poses", "physics_steps_choosing")}
                              for mode, m in e.get("pose_sampling", {}).items()} if e else {},
        }
    mean = {}
    for key in RATE_KEYS:
        values = [o[key] for o in objects.values()]
        # An object the adapted dataset lost counts as 0 for its later stages.
        values = [0.0 if v is None else v for v in values] if any(v is not None for v in values) else []
        mean[key] = sum(values) / len(values) if values else None
    modes = dict.fromkeys(mode for o in objects.values() for mode in o["pose_sampling"])
    mean["pose_sampling"] = {mode: {"success": sum(o["pose_sampling"].get(mode, {}).get("success", 0.0)
                                                   for o in objects.values()) / len(objects)}
                             for mode in modes}
    timings = {s: round(run.state["stages"][s]["seconds"], 4) for s in STAGES if s in run.state["stages"]}
    record = _read(run.path("refine", "run.json")) or {}
    return {"objects": objects, "mean": mean, "timings_s": timings, "device": device_name(run.config.backend),
            "preset_config": run.config.to_json(), "refine_explore": record.get("explore")}


def _plot_rates(summary: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from diffrl_jax.files import save_figure_atomic

    rows = {**summary["objects"], "mean": summary["mean"]}  # one bar group per object, then the mean
    groups = list(rows)
    labels = ["raw", "adapted", "kept", "sampled", "pose sampling"]
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(groups)), 3.8))
    width = 0.8 / len(RATE_KEYS)
    for k, (key, label) in enumerate(zip(RATE_KEYS, labels)):
        values = [rows[g].get(key) for g in groups]
        ax.bar(np.arange(len(groups)) + (k - 2) * width, [np.nan if v is None else v for v in values], width,
               label=label)
    ax.set_xticks(np.arange(len(groups)), [g[:24] for g in groups], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("success rate / fraction")
    ax.legend(fontsize=8, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure_atomic(fig, path)


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def report_markdown(run: Run, summary: dict) -> str:
    c = run.config
    dataset = f"built-in proposals ({', '.join(c.objects)})" if c.dataset == "builtin" else c.dataset
    lines = [f"# Pipeline report: {run.out.name}", "",
             f"Dataset: {dataset}; "
             f"scenario `{c.scenario}`, protocol `{c.protocol}`, backend `{c.backend}` on {summary['device']}.", "",
             "## Success per stage", "",
             "| object | raw | adapted | kept | sampled | pose sampling (Wilson 95%) |",
             "|---|---|---|---|---|---|"]
    for code, o in summary["objects"].items():
        ci = o["pose_sampling_ci95"]
        pose = "-" if o["pose_sampling_success"] is None else \
            f"{o['pose_sampling_success']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] of {o['n_poses']}"
        lines.append(f"| {code} | {_fmt(o['raw_success'])} | {_fmt(o['adapted_success'])} | "
                     f"{_fmt(o['kept_fraction'])} | {_fmt(o['sample_success'])} | {pose} |")
    m = summary["mean"]
    lines += [f"| **mean** | {_fmt(m['raw_success'])} | {_fmt(m['adapted_success'])} | {_fmt(m['kept_fraction'])} | "
              f"{_fmt(m['sample_success'])} | {_fmt(m['pose_sampling_success'])} |", "",
              "- raw: grasps of the raw dataset that pass the hold test; adapted: the refined dataset, "
              "re-validated from disk; kept: share of raw grasps the refiner kept (fixed or as they were); "
              "sampled: diffusion samples that pass the hold test; pose sampling: objects dropped on a "
              "table, one sampled grasp chosen per pose, lifted 20 cm and held 1 s.", "",
              "![success per stage](success_by_stage.png)", ""]
    if any(o.get("tabletop_lifted_pairs") is not None for o in summary["objects"].values()):
        lines += ["Table-top pairs (the pose-conditioned model's data, `tabletop/summary.json`): "
                  + "; ".join(f"{code}: {o['tabletop_lifted_pairs']} lifted, {o['tabletop_clear_fraction']:.1%} "
                              "of pairs clear of the table" for code, o in summary["objects"].items()
                              if o.get("tabletop_lifted_pairs") is not None) + ".", ""]
    modes = list(m.get("pose_sampling", {}))
    if modes:
        lines += ["## Pose sampling by selection", "",
                  "The same poses and samples, chosen by each mode: check hold-tests a shortlist "
                  "(its physics steps are counted), one-shot takes the first sample as it is.", "",
                  "| object | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes)]
        for code, o in summary["objects"].items():
            cells = []
            for mode in modes:
                r = o["pose_sampling"].get(mode)
                cells.append("-" if r is None else f"{r['success']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}], "
                                                   f"{r['physics_steps_choosing']} steps choosing")
            lines.append(f"| {code} | " + " | ".join(cells) + " |")
        lines += ["| **mean** | " + " | ".join(_fmt(m["pose_sampling"][mode]["success"]) for mode in modes) + " |",
                  ""]
    lines += ["## Timings", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {s} | {t:.1f} |" for s, t in summary["timings_s"].items()]
    lines += ["", "## Learning curves", ""]
    for rel, title in (("refine/learning_curve.png", "PPO refiner"), ("train/loss.png", "diffusion training")):
        if run.path(rel).is_file():
            lines += [f"{title}:", "", f"![{title}]({rel})", ""]
    stills = sorted(run.path("evaluate", "grasps").glob("*.png")) if run.path("evaluate", "grasps").is_dir() else []
    videos = sorted(run.path("evaluate", "videos").glob("*.mp4")) if run.path("evaluate", "videos").is_dir() else []
    if stills or videos:
        lines += ["## Rendered grasps", ""]
        lines += [f"![{p.stem}](evaluate/grasps/{p.name})" for p in stills[:6]]
        lines += [""] + [f"- [{p.name}](evaluate/videos/{p.name})" for p in videos]
    lines += ["", "Settings: `pipeline.json`; figures: `summary.json`.", ""]
    return "\n".join(lines)


def stage_report(run: Run) -> dict:
    from diffrl_jax.files import write_json_atomic, write_text_atomic

    summary = collect(run)
    _plot_rates(summary, run.path("success_by_stage.png"))
    write_text_atomic(run.path("report.md"), report_markdown(run, summary))
    write_json_atomic(run.path("summary.json"), summary)
    return summary


STAGE_FUNCTIONS: dict[str, Callable[[Run], None]] = {
    "dataset": stage_dataset, "validate": stage_validate, "refine": stage_refine, "tabletop": stage_tabletop,
    "train": stage_train,
    "sample": stage_sample, "evaluate": stage_evaluate,
}


def run_pipeline(out, config: PipelineConfig, stop_after: str | None = None,
                 on_stage: Callable[[str, str], None] | None = None, *, bars: Callable = no_bars) -> dict | None:
    """Runs (or resumes) the stages into `out`; the summary, or None when stopped early.

    `on_stage(stage, what)`: each stage as it starts (or is skipped);
    `bars`: the stages' progress bars (`workflows.progress`).
    """
    if stop_after is not None and stop_after not in STAGES[:-1]:
        raise ConfigError(f"--stop-after must be one of {STAGES}, got {stop_after!r}")
    from diffrl_jax.files import run_lock

    with run_lock(out, "diffrl pipeline"):  # already held when `diffrl pipeline` runs this (re-entrant)
        return _run_stages(Run(out, config, bars), stop_after, on_stage)


def _run_stages(run: Run, stop_after: str | None, on_stage) -> dict | None:
    run.open()
    for stage in STAGES[:-1]:
        if run.done(stage):
            if on_stage:
                on_stage(stage, "done before")
        else:
            if on_stage:
                on_stage(stage, "running")
            start = time.perf_counter()
            try:
                STAGE_FUNCTIONS[stage](run)
            except BaseException:
                run.record(stage, time.perf_counter() - start, done=False)
                raise
            run.record(stage, time.perf_counter() - start, done=True)
        if stage == stop_after:
            return None
    if on_stage:
        on_stage("report", "writing")
    return stage_report(run)  # always rewritten (cheap): it reflects the stages' files


def summary_lines(summary: dict, out) -> list[str]:
    """The summary as the table the pipeline's shell prints (without --json)."""
    lines = [f"{'object':<40} " + " ".join(f"{k.replace('_success', ''):>12}" for k in RATE_KEYS)]
    for code, o in list(summary["objects"].items()) + [("mean", summary["mean"])]:
        lines.append(f"{code[:40]:<40} " + " ".join(f"{_fmt(o[k]):>12}" for k in RATE_KEYS))
    for mode, m in summary["mean"].get("pose_sampling", {}).items():
        lines.append(f"pose sampling, --select {mode}: mean {_fmt(m['success'])}")
    total = sum(summary["timings_s"].values())
    lines.append(f"{total:.0f} s of stages on {summary['device']}; report: {pathlib.Path(out) / 'report.md'}")
    return lines
