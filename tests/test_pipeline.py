"""`diffrl pipeline` end to end on a tiny run: stopped after a stage, resumed without
redoing it, summary.json and report.md written and parsed; settings and bad input."""

import json
import pathlib
import tomllib

import pytest

from _paths import SHARED_DATA, requires_shared_data
from diffrl_jax.cli.main import main
from diffrl_jax.experiments import pipeline

REPO = pathlib.Path(__file__).resolve().parents[1]
BOTTLE = "sem-Bottle-437678d4bc6be981c8724d5673a063a6"
# The shared bottle's first 6 grasps (2 hold under this protocol); a coarse, short hold
# test, a tiny PPO run and diffusion model, 2 poses: every stage in about a minute.
TINY = ["limit=6", "tabletop=false", "eval_compare=one-shot,first", "budget_pieces=3", "refine_iterations=2", "refine_envs=8", "refine_attempts=2", "refine_steps=1",
        "refine_robustness=2", "train_steps=40", "train_batch=16", "sample_n=8", "eval_poses=2", "eval_candidates=4", "videos=0",
        "hold.settle_s=0.02", "hold.hold_s=0.1", "lift.timestep=0.008", "lift.settle_s=0.5",
        "ppo.num_minibatches=2", "ppo.policy_hidden_sizes=32,32", "ppo.value_hidden_sizes=32,32",
        "diffusion.width=32", "diffusion.depth=1", "diffusion.time_dim=16", "diffusion.encoding_points=16",
        "diffusion.encoding_samples=256"]


def _argv(out, *extra):
    sets = [x for item in TINY for x in ("--set", item)]
    return ["pipeline", "--dataset", str(SHARED_DATA), "--objects", BOTTLE, *sets, "--out", str(out), *extra]


def _state(out):
    return json.loads((out / "pipeline.json").read_text())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run stopped after `refine`, then the same command again (which finishes it)."""
    out = tmp_path_factory.mktemp("pipeline") / "run"
    assert main(_argv(out, "--stop-after", "refine")) == 0
    stopped = _state(out)
    refine_files = {p: p.stat().st_mtime_ns for p in (out / "refine").rglob("*") if p.is_file()}
    assert main(_argv(out, "--json")) == 0
    return dict(out=out, stopped=stopped, refine_files=refine_files)


@requires_shared_data
def test_stopped_run_has_its_stages_and_no_more(run):
    stages = run["stopped"]["stages"]
    assert list(stages) == ["dataset", "validate", "refine"]
    assert all(s["done"] and s["attempts"] == 1 for s in stages.values())


@requires_shared_data
def test_resumed_run_does_not_redo_finished_stages(run):
    out = run["out"]
    stages = _state(out)["stages"]
    assert list(stages) == list(pipeline.STAGES[:-1])
    for name in ("dataset", "validate", "refine"):
        assert stages[name] == run["stopped"]["stages"][name]  # not run a second time
    for name in ("train", "sample", "evaluate"):
        assert stages[name]["done"] and stages[name]["attempts"] == 1
    for path, mtime in run["refine_files"].items():  # the refine stage's files are untouched
        assert path.stat().st_mtime_ns == mtime, path
    # A third run redoes nothing but the report.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert main(_argv(out)) == 0
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    changed = {p.relative_to(out).as_posix() for p in after if before.get(p) != after[p]}
    assert changed <= {"pipeline.json", "summary.json", "report.md", "success_by_stage.png"}, changed


@requires_shared_data
def test_summary_has_the_figures_of_every_stage(run, capsys):
    out = run["out"]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) >= {"objects", "mean", "timings_s", "device"}
    assert list(summary["objects"]) == [BOTTLE]
    o = summary["objects"][BOTTLE]
    validate = json.loads((out / "validate" / "report.json").read_text())
    refine = json.loads((out / "refine" / "summary.json").read_text())
    evaluate = json.loads((out / "evaluate" / "summary.json").read_text())
    assert o["raw_success"] == validate["objects"][BOTTLE]["success_rate"]
    assert o["n_raw"] == 6
    assert o["kept_fraction"] == refine["objects"][BOTTLE]["kept_fraction"]
    assert o["adapted_success"] == refine["objects"][BOTTLE]["adapted_success"]
    assert o["pose_sampling_success"] == evaluate["objects"][BOTTLE]["rate"] and o["n_poses"] == 2
    # Every selection mode that ran (the preset's check, then one-shot and first), on the same poses and samples.
    assert list(o["pose_sampling"]) == ["check", "one-shot", "first"]
    assert o["pose_sampling"]["check"]["success"] == o["pose_sampling_success"]
    assert o["pose_sampling"]["one-shot"]["physics_steps_choosing"] == 0
    assert o["tabletop_lifted_pairs"] is None  # the stage is off in this tiny run
    for mode, m in o["pose_sampling"].items():
        assert m["n_poses"] == 2 and 0.0 <= m["ci95"][0] <= m["success"] <= m["ci95"][1] <= 1.0
        assert summary["mean"]["pose_sampling"][mode]["success"] == m["success"]
    assert "## Pose sampling by selection" in (out / "report.md").read_text()
    for key in pipeline.RATE_KEYS:
        assert 0.0 <= o[key] <= 1.0, key
        assert summary["mean"][key] == o[key]  # one object: its mean is itself
    assert set(summary["timings_s"]) == set(pipeline.STAGES[:-1])
    # Linking a DexGraspNet directory can take well under a millisecond; every stage that
    # simulates or trains takes real time.
    assert all(t >= 0 for t in summary["timings_s"].values())
    assert all(summary["timings_s"][s] > 0 for s in ("validate", "refine", "train", "sample", "evaluate"))
    # The samples were hold-tested: one grasp file of the object, sample_n grasps in it.
    sample = json.loads((out / "sample" / "report.json").read_text())
    assert sample["objects"][BOTTLE]["n"] == 8
    assert o["sample_success"] == sample["objects"][BOTTLE]["success_rate"]


@requires_shared_data
def test_report_has_tables_and_plots(run):
    out = run["out"]
    report = (out / "report.md").read_text()
    assert report.startswith("# Pipeline report")
    row = next(line for line in report.splitlines() if line.startswith(f"| {BOTTLE}"))
    summary = json.loads((out / "summary.json").read_text())
    assert f"{summary['objects'][BOTTLE]['raw_success']:.3f}" in row
    for image in ("success_by_stage.png", "refine/learning_curve.png", "train/loss.png"):
        assert f"]({image})" in report
        assert (out / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@requires_shared_data
def test_other_settings_on_the_same_run_are_refused(run, capsys):
    assert main(_argv(run["out"], "--set", "train_steps=41")) == 2
    assert "differs in: train_steps" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["pipeline", "--preset", "paper", "--out", "/tmp/never-pipeline"], "needs --dataset DIR"),
    (["pipeline", "--dataset", "/nonexistent", "--out", "/tmp/never-pipeline"], "no such directory"),
    (["pipeline", "--set", "trian_steps=5", "--out", "/tmp/never-pipeline"], "unknown pipeline field"),
    (["pipeline", "--set", "train_steps=five", "--out", "/tmp/never-pipeline"], "is not an integer"),
    (["pipeline", "--set", "train_steps=0", "--out", "/tmp/never-pipeline"], "positive integer"),
    (["pipeline", "--objects", "teapot", "--out", "/tmp/never-pipeline"], "built-in objects must be"),
    (["pipeline", "--set", "scenario=windy", "--out", "/tmp/never-pipeline"], "scenario must be"),
    (["pipeline", "--set", "refine_explore=lots", "--out", "/tmp/never-pipeline"], "is not a number"),
    (["pipeline", "--set", "refine_explore=-0.5", "--out", "/tmp/never-pipeline"], "refine_explore must be"),
    (["pipeline", "--set", "refine_explore=nan", "--out", "/tmp/never-pipeline"], "refine_explore must be"),
    (["pipeline", "--set", "eval_select=best", "--out", "/tmp/never-pipeline"], "eval_select must be"),
    (["pipeline", "--set", "train_min_robustness=1.5", "--out", "/tmp/never-pipeline"], "must lie in [0, 1]"),
    (["pipeline", "--set", "train_min_robustness=0.5", "--out", "/tmp/never-pipeline"],
     "needs the robustness label"),
    (["pipeline", "--set", "refine_robustness=-1", "--out", "/tmp/never-pipeline"], "refine_robustness must be"),
    (["pipeline", "--set", "refine_steps=0", "--out", "/tmp/never-pipeline"], "refine_steps must be"),
])
def test_bad_input_exits_2(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not pathlib.Path("/tmp/never-pipeline").exists()


def test_a_directory_that_is_not_a_run_is_refused(tmp_path, capsys):
    (tmp_path / "something.txt").write_text("mine")
    assert main(["pipeline", "--out", str(tmp_path)]) == 2
    assert "not an empty directory nor a pipeline run" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["something.txt"]


def test_group_overrides_collect_in_order():
    config = pipeline.PipelineConfig().with_assignments(
        {"hold.friction": "0.5", "lift.hold_s": "0.5", "train_steps": "7", "objects": "box, sphere"})
    assert config.hold == ("friction=0.5",) and config.lift == ("hold_s=0.5",)
    assert config.train_steps == 7 and config.objects == ("box", "sphere")
    assert json.loads(json.dumps(config.to_json()))["hold"] == ["friction=0.5"]


def test_the_package_list_names_every_package():
    """pyproject lists its packages (experiments/ installs as diffrl_jax.experiments):
    a new subpackage must be added there, or installs would lack it."""
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "diffrl_jax").rglob("__init__.py")}
    assert listed == found | {"diffrl_jax.experiments"}
    assert pathlib.Path(pipeline.__file__).resolve() == REPO / "experiments" / "pipeline.py"


@pytest.mark.parametrize("assignments", [
    {},
    {"refine_explore": "0.3", "scenario": "low-friction", "limit": "6", "hold.settle_s": "0.02",
     "ppo.num_minibatches": "2", "refine_robustness": "2", "refine_block": "1"},
])
def test_refine_stage_calls_the_workflow_with_its_printed_command(tmp_path, assignments):
    """The refine stage's typed config is what its `$ diffrl refine ...` line parses to, and
    its exploration is the refine preset's unless the pipeline's config sets one."""
    from diffrl_jax.cli import refine as cli_refine
    from diffrl_jax.cli.main import build_parser
    from diffrl_jax.workflows import pipeline as pipeline_workflow
    from diffrl_jax.workflows import refine as refine_workflow

    config = pipeline.config_from("quick", None, None, assignments)
    run = pipeline_workflow.Run(tmp_path / "run", config)
    argv = run.refine_argv()
    assert cli_refine.config_from_args(build_parser().parse_args(argv)) == run.refine_config()
    refine_config = run.refine_config()
    record = refine_workflow.run_record(refine_config, refine_workflow.resolve(refine_config))
    if "refine_explore" in assignments:
        assert record["explore"] == 0.3 and "--explore" in argv
    else:
        assert record["explore"] == [0.2, 0.0] and "--explore" not in argv  # the cpu preset's, per step


@pytest.mark.parametrize("dataset,assignments", [
    (None, {}),
    pytest.param("shared", {"limit": "6", "hold.settle_s": "0.02", "scenario": "low-friction", "backend": "mujoco"},
                 marks=requires_shared_data),
])
def test_dataset_and_validate_stages_call_the_workflows_with_their_printed_commands(
        tmp_path, dataset, assignments):
    """The dataset (propose) and validate stages' typed configs, the sample stage's hold test
    included, are what their `$ diffrl ...` lines parse to."""
    from diffrl_jax.cli.main import build_parser, propose_config_from_args, validate_config_from_args
    from diffrl_jax.workflows import pipeline as pipeline_workflow

    dataset, objects = (str(SHARED_DATA), [BOTTLE]) if dataset else (None, None)
    run = pipeline_workflow.Run(tmp_path / "run", pipeline.config_from("quick", dataset, objects, assignments))
    parse = build_parser().parse_args
    for k, name in enumerate(run.config.objects if dataset is None else []):
        config = pipeline_workflow.propose_config(run, name, k)
        assert propose_config_from_args(parse(pipeline_workflow.propose_argv(config, tmp_path / "s"))) == config
        assert config.seed == run.config.seed + k and not config.label
    for source, selection in ((run.raw, True), (run.path("sample", "grasps"), False)):
        config = pipeline_workflow.validate_config(run, source, selection)
        argv = pipeline_workflow.validate_argv(run, source, tmp_path / "r.json", selection)
        assert validate_config_from_args(parse(argv)) == config
        assert config.limit == (run.config.limit if selection else None)
    if dataset:
        assert pipeline_workflow.validate_config(run, run.raw).objects == (BOTTLE,)
        assert pipeline_workflow.validate_config(run, run.raw).hold["settle_s"] == 0.02


@pytest.mark.parametrize("assignments", [
    {},
    {"train_min_robustness": "0.5", "refine_robustness": "2", "diffusion.width": "32", "train_steps": "40",
     "lift.settle_s": "0.5", "scenario": "heavy", "videos": "0", "eval_select": "contact"},
])
def test_diffusion_and_evaluate_stages_call_the_workflows_with_their_printed_commands(
        tmp_path, monkeypatch, assignments):
    """The train, sample and evaluate stages' typed configs are what their `$ diffrl ...` lines parse to."""
    from diffrl_jax.cli import diffusion as cli_diffusion
    from diffrl_jax.cli import evaluate as cli_evaluate
    from diffrl_jax.cli.main import build_parser
    from diffrl_jax.workflows import pipeline as pipeline_workflow

    monkeypatch.setattr(pipeline_workflow, "trained_codes", lambda run: ["builtin-box", "builtin-sphere"])
    run = pipeline_workflow.Run(tmp_path / "run", pipeline.config_from("quick", None, None, assignments))
    parse = build_parser().parse_args
    assert cli_diffusion.train_config_from_args(parse(pipeline_workflow.train_argv(run))) == \
        pipeline_workflow.train_config(run)
    assert cli_diffusion.sample_config_from_args(parse(pipeline_workflow.sample_argv(run, "builtin-box"))) == \
        pipeline_workflow.sample_config(run, "builtin-box")
    assert cli_evaluate.config_from_args(parse(pipeline_workflow.evaluate_argv(run))) == \
        pipeline_workflow.evaluate_config(run)
    from diffrl_jax.cli import tabletop as cli_tabletop

    assert cli_tabletop.config_from_args(parse(pipeline_workflow.tabletop_argv(run))) == \
        pipeline_workflow.tabletop_config(run)
    assert cli_tabletop.scorer_config_from_args(parse(pipeline_workflow.scorer_argv(run))) == \
        pipeline_workflow.scorer_config(run)
    assert pipeline_workflow.evaluate_config(run).scorer == str(run.path("train-scorer"))
    # With the table-top stage on (the presets), the model trains on its pairs, with the pose condition.
    assert pipeline_workflow.train_config(run).dataset == str(run.path("tabletop"))
    assert pipeline_workflow.train_config(run).diffusion["pose_condition"] is True
    off = pipeline_workflow.Run(tmp_path / "off", pipeline.config_from(
        "quick", None, None, {**assignments, "tabletop": "false", "eval_compare": "one-shot"}))
    assert pipeline_workflow.train_config(off).dataset == str(off.path("refine", "adapted"))
    assert "pose_condition" not in pipeline_workflow.train_config(off).diffusion


def test_a_tabletop_stage_without_lifted_pairs_stops_the_run(tmp_path):
    from diffrl_jax.errors import DataError
    from diffrl_jax.workflows import pipeline as pipeline_workflow

    run = pipeline_workflow.Run(tmp_path / "run", pipeline.config_from("quick", None, None, {}))
    (run.path("tabletop")).mkdir(parents=True)
    (run.path("tabletop", "summary.json")).write_text(json.dumps({"pairs": {"train_lifted": 0}}))
    with pytest.raises(DataError, match="no grasp lifted in any training pose"):
        pipeline_workflow.stage_tabletop(run)
    # The learned selection has nothing to learn from without the table-top pairs.
    from diffrl_jax.errors import ConfigError

    with pytest.raises(ConfigError, match="learned selection needs the table-top pairs"):
        pipeline.config_from("quick", None, None, {"tabletop": "false"})
