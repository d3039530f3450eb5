"""`diffrl refine` end to end on a few shared bottle grasps (MuJoCo-C backend), resume, bad input.

A refine killed mid-training and resumed is tested in test_fault_injection (the pipeline
SIGKILLed after refine's first checkpoint, every file compared with an uninterrupted run);
test_ppo checks that a checkpointed state resumes bitwise.
"""

import json

import numpy as np
import pytest

from _paths import SHARED_DATA, requires_shared_data
from diffrl_jax.cli.main import main

BOTTLE = "sem-Bottle-437678d4bc6be981c8724d5673a063a6"
ARGS = ["--objects", BOTTLE, "--limit", "6", "--iterations", "4", "--block", "2", "--envs", "8",
        "--attempts", "2", "--budget-pieces", "3", "--set", "settle_s=0.02", "--set", "hold_s=0.1",
        "--ppo", "num_minibatches=2", "--ppo", "policy_hidden_sizes=32,32",
        "--ppo", "value_hidden_sizes=32,32", "--heldout", "0.34", "--threads", "2",
        "--robustness", "2", "--rounds", "2", "--steps", "2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("refine") / "run"
    assert main(["refine", str(SHARED_DATA), "--out", str(out), *ARGS]) == 0
    return out


def _npz(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


@requires_shared_data
@pytest.mark.slow
def test_refine_writes_every_output(run):
    for name in ("run.json", "metrics.jsonl", "learning_curve.png", "summary.json", "adaptation.npz"):
        assert (run / name).is_file(), name
    assert (run / "tensorboard").is_dir() and (run / "checkpoints" / "4").is_dir()
    def refuse(constant):
        raise AssertionError(f"metrics.jsonl holds {constant}: not strict JSON")

    lines = (run / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line, parse_constant=refuse) for line in lines]
    assert [r["iteration"] for r in records] == [1, 2, 3, 4]
    # An iteration in which no episode ended logs null episode means, not NaN.
    for r in records:
        assert (r["episodes"] == 0) == (r["episode_length"] is None), r
    assert all(np.isfinite(r["reward"]) and 0 <= r["env/success"] <= 1 for r in records)
    summary = json.loads((run / "summary.json").read_text())
    r = summary["objects"][BOTTLE]
    for key in ("raw_success", "adapted_success", "fixed_fraction", "kept_fraction",
                "heldout_adapted_success"):
        assert key in r
    adaptation = _npz(run / "adaptation.npz")
    assert r["n"] == 6 and adaptation["keep"].shape == (6,)
    # Kept = refined or already holding; the summary's fractions come from these arrays.
    np.testing.assert_array_equal(adaptation["keep"], adaptation["refined"] | adaptation["raw_success"])
    assert r["kept_fraction"] == pytest.approx(adaptation["keep"].mean())
    # Two rounds of two attempts: a second round only for raw failures the first did not fix.
    assert summary["rounds"] == 2 and json.loads((run / "run.json").read_text())["rounds"] == 2
    assert set(np.unique(adaptation["attempts"])) <= {2, 4}
    assert (adaptation["attempts"][adaptation["raw_success"]] == 2).all()
    assert r["attempts_mean"] == pytest.approx(adaptation["attempts"].mean())
    if adaptation["keep"].any():
        from diffrl_jax.data.dexgraspnet import load_dexgraspnet

        adapted = load_dexgraspnet(run / "adapted")
        assert len(adapted) == int(adaptation["keep"].sum())
        np.testing.assert_array_equal(adapted.extras["source_index"], np.flatnonzero(adaptation["keep"]))
        assert adapted.extras["success"].all()
        # Two perturbed copies per kept grasp: robustness in {0, 1/2, 1}, its mean in the summary.
        values = adapted.extras["robustness"]
        assert set(np.unique(values)) <= {0.0, 0.5, 1.0}
        assert r["kept_robustness_mean"] == pytest.approx(values.mean())
        assert summary["timings_s"]["robustness_s"] > 0


@requires_shared_data
def test_checkpoint_restores_from_the_run_directory_alone(run):
    """`state_template(run_dir)` rebuilds the TrainState from run.json: the last checkpoint
    restores into it, at the run's last iteration, with finite parameters."""
    import jax

    from diffrl_jax import checkpoint
    from diffrl_jax.workflows import refine as refine_workflow

    state = checkpoint.restore(run / "checkpoints", refine_workflow.state_template(run))[0]
    assert int(state.iteration) == 4
    leaves = jax.tree_util.tree_leaves(state.params)
    assert leaves and all(np.all(np.isfinite(np.asarray(x))) for x in leaves)


def test_metrics_log_is_strict_json(tmp_path):
    from diffrl_jax.files import read_jsonl, write_jsonl_atomic

    path = tmp_path / "metrics.jsonl"
    write_jsonl_atomic(path, [{"iteration": 1, "episode_length": float("nan"), "loss": float("inf"),
                               "reward": 0.5, "episodes": 0}])
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    assert read_jsonl(path, "iteration") == [
        {"iteration": 1, "episode_length": None, "loss": None, "reward": 0.5, "episodes": 0}]


@requires_shared_data
def test_refusing_a_non_empty_out_and_changed_settings(run, capsys):
    assert main(["refine", str(SHARED_DATA), "--out", str(run), *ARGS]) == 2
    assert "--resume" in capsys.readouterr().err
    argv = ["refine", str(SHARED_DATA), "--out", str(run), *ARGS, "--resume", "--seed", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "seed" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["refine", "/nonexistent/dir", "--out", "/tmp/never_written"], "does not exist"),
    (["refine", str(SHARED_DATA), "--out", "/tmp/never_written", "--scenario", "icy"], "unknown scenario"),
    (["refine", str(SHARED_DATA), "--out", "/tmp/never_written", "--set", "friction=-1"], "friction"),
    (["refine", str(SHARED_DATA), "--out", "/tmp/never_written", "--ppo", "num_envs=0"], "num_envs"),
    (["refine", str(SHARED_DATA), "--out", "/tmp/never_written", "--refine", "steps=0"], "steps"),
    (["refine", str(SHARED_DATA), "--out", "/tmp/never_written", "--ppo", "learning_rate"], "FIELD=VALUE"),
])
def test_bad_input_exits_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    import pathlib

    assert not pathlib.Path("/tmp/never_written").exists()


def test_adapted_dataset_leaves_out_objects_with_no_kept_grasp(tmp_path):
    """An object whose every grasp was dropped gets no (empty) grasp file, so the adapted
    dataset reloads (it used to write an empty file that `load_dexgraspnet` refused)."""
    import types

    from diffrl_jax.data.dexgraspnet import GraspDataset, load_dexgraspnet, write_dexgraspnet
    from diffrl_jax.data.example import example_dataset
    from diffrl_jax.data.dexgraspnet import write_mesh
    from diffrl_jax.rl import refine

    for name in ("cylinder", "box"):
        source, text = example_dataset(name, 3)
        write_mesh(tmp_path / "raw", source.object_codes[0], text)
        write_dexgraspnet(tmp_path / "raw", source)
    dataset = load_dexgraspnet(tmp_path / "raw")
    box = dataset.object_index == dataset.object_codes.index("builtin-cylinder")
    keep = ~box & (np.arange(len(dataset)) % 2 == 0)
    corrected = dataset.grasps.copy()
    corrected[:, :3] += 0.01  # a corrected wrist position
    adapted = types.SimpleNamespace(keep=keep, grasps=corrected, refined=keep & False)
    problem = types.SimpleNamespace(dataset=dataset, heldout=np.zeros(len(dataset), bool))
    out, labels = refine.adapted_dataset(problem, adapted)
    assert isinstance(out, GraspDataset) and out.object_codes == ("builtin-box",)
    np.testing.assert_array_equal(labels["source_index"], np.flatnonzero(keep))
    write_dexgraspnet(tmp_path / "adapted", out, mesh_source_root=dataset.root, labels=labels)
    back = load_dexgraspnet(tmp_path / "adapted")
    assert back.object_codes == ("builtin-box",) and len(back) == int(keep.sum())
    np.testing.assert_allclose(back.grasps, corrected[keep], atol=1e-9)


@pytest.mark.parametrize("value", ["-0.1", "inf", "nan", "wide"])
def test_bad_explore_is_a_usage_error(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["refine", "/tmp/anything", "--out", "/tmp/never_written", "--explore", value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--explore" in err and "Traceback" not in err


def test_more_explore_values_than_steps_fail_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["refine", "/tmp/anything", "--out", str(out), "--steps", "2", "--explore", "0.2,0,0"])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "explore gives 3 values for episodes of 2 step(s)" in err and "Traceback" not in err


def test_explore_is_recorded_as_one_number_or_one_per_step():
    """run.json keeps a single --explore value a number, as runs before per-step values
    recorded it, so they still resume; several values stay a list."""
    from diffrl_jax.workflows.presets import REFINE_PRESETS, explore_values

    cpu = REFINE_PRESETS["cpu"]
    assert explore_values(None, cpu, 3) == [0.2, 0.0]  # the preset's per-step exploration
    assert explore_values(None, cpu, 1) == 0.2  # cut to one-step episodes
    assert explore_values((0.3,), cpu, 3) == 0.3
    assert explore_values((0.2, 0.0), cpu, 3) == [0.2, 0.0]
    assert explore_values(None, {"explore": (0.2, 0.0)}, 2) == [0.2, 0.0]  # a list, as JSON reads it back
