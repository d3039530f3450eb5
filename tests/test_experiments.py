"""The experiment scripts: seeds trained as one vmapped program equal single runs; tiny sweeps end to end.

The scenario sweep's end-to-end test replaces `diffrl refine`'s command body
by a stand-in that writes the files a refine run leaves (its run.json from
the real argument handling, a summary.json of known figures): a real refine
compiles its environment three times, which costs about two minutes on a
2-core CPU with no cache to help (programs with host callbacks are not
cached). Set DIFFRL_TEST_REFINE_SWEEP=1 to run the sweep with the real
refine as well.
"""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from diffrl_jax.cli import refine as cli_refine
from diffrl_jax.cli.main import main as diffrl_main
from diffrl_jax.diffusion import seeds as seeds_lib
from diffrl_jax.diffusion.config import DiffusionConfig
from diffrl_jax.diffusion.model import make_denoiser, model_kwargs
from diffrl_jax.diffusion.train import TrainData, fit_normaliser, init_train_state, make_train_block
from diffrl_jax.errors import ConfigError
from diffrl_jax.experiments import hold_by_scale, random_corrections, scenario_sweep, seed_sweep, table_clearance
from diffrl_jax.workflows import refine as refine_workflow

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_MODEL = ["width=32", "depth=1", "time_dim=16", "block_steps=5", "warmup_steps=2",
              "encoding_points=16", "encoding_samples=256"]
# A short hold test on few convex pieces: the scripts' plumbing, not the physics, is under test.
QUICK_HOLD = ["settle_s=0.02", "hold_s=0.1"]


@pytest.fixture(scope="module")
def example_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("example") / "data"
    assert diffrl_main(["data", "example", str(out), "--objects", "box", "cylinder", "--n", "6"]) == 0
    return out


def _flags(flag, items):
    return [x for item in items for x in (flag, item)]


# --- the library piece: seeds as one program ------------------------------------------------------


def test_vmapped_seeds_equal_single_runs():
    config = DiffusionConfig(width=32, depth=1, time_dim=16, num_steps=40, batch_size=16, warmup_steps=2,
                             block_steps=5, encoding_points=16, encoding_samples=256)
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(48, 31)).astype(np.float32)
    cond = rng.normal(size=(3, 17)).astype(np.float32)
    data = TrainData.create(samples, cond, np.arange(48) % 3, fit_normaliser(samples))
    model = make_denoiser(**model_kwargs(config, 31, 17))
    seeds = [3, 0, 11]

    blocks = []
    stacked = seeds_lib.run_seeds(seeds_lib.init_seeds(config, model, seeds), data, config, model,
                                  until_step=10, on_block=lambda s, m: blocks.append(m))
    assert [int(s) for s in stacked.step] == [10, 10, 10] and len(blocks) == 2
    assert blocks[-1]["loss"].shape == (3,)

    block = make_train_block(config, model)
    for i, seed in enumerate(seeds):
        single = init_train_state(config, model, seed)
        start = single.params
        for _ in range(2):
            single, metrics = block(single, data)
        mine = seeds_lib.seed_state(stacked, i)
        np.testing.assert_allclose(blocks[-1]["loss"][i], float(metrics["loss"]), rtol=1e-5)
        for a, b, before in zip(jax.tree.leaves(mine.params), jax.tree.leaves(single.params),
                                jax.tree.leaves(start)):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
        for a, b in zip(jax.tree.leaves(mine.ema_params), jax.tree.leaves(single.ema_params)):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(jax.random.key_data(mine.key), jax.random.key_data(single.key))
        # The comparison means something: training moved the parameters well beyond the tolerance.
        moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                    for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(start)))
        assert moved > 1e-3
    first = jax.tree.leaves(seeds_lib.seed_state(stacked, 0).params)
    second = jax.tree.leaves(seeds_lib.seed_state(stacked, 1).params)
    assert any(not np.allclose(a, b, atol=1e-3) for a, b in zip(first, second))  # seeds do differ


def test_init_seeds_rejects_bad_seed_lists():
    config = DiffusionConfig(width=32, depth=1, time_dim=16)
    model = make_denoiser(**model_kwargs(config, 31, 17))
    for bad, match in (([], "non-empty"), ([1, 1], "differ"), ([-1], r"\[0, 2\^31\)")):
        with pytest.raises(ConfigError, match=match):
            seeds_lib.init_seeds(config, model, bad)


def test_spread():
    s = seeds_lib.spread([1.0, 2.0, None, 3.0, float("nan")])
    assert s == {"mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0, "n": 3}
    assert seeds_lib.spread([0.5])["std"] == 0.0
    assert seeds_lib.spread([None])["mean"] is None


# --- experiments/seed_sweep.py --------------------------------------------------------------------


def test_seed_sweep_end_to_end(example_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = [str(example_dir), "--out", str(out), "--seeds", "2", "--first-seed", "5", "--steps", "10",
            "--batch", "8", "--samples", "4", "--hold-samples", "2", "--budget-pieces", "3",
            "--threads", "2",
            *_flags("--set", TINY_MODEL), *_flags("--protocol-set", QUICK_HOLD)]
    assert seed_sweep.main([*argv, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    result = json.loads((out / "seed_sweep.json").read_text())
    assert printed == result
    assert (out / "loss_curves.png").stat().st_size > 1000
    assert result["seeds"] == [5, 6] and result["num_grasps"] == 12
    assert [c["object"] for c in result["conditions"]] == ["builtin-box", "builtin-cylinder"]
    assert result["samples_per_seed"] == 8 and result["hold_tested_per_seed"] == 4
    assert result["curves"]["step"] == [5, 10]
    for i, row in enumerate(result["per_seed"]):
        assert row["final_loss"] == result["curves"]["loss"][-1][i] and np.isfinite(row["final_loss"])
        assert 0 <= row["coverage"] <= 1 and 0 <= row["precision"] <= 1
        assert row["hold_success"] in (0.0, 0.25, 0.5, 0.75, 1.0)  # 4 hold-tested samples per seed
    losses = [row["final_loss"] for row in result["per_seed"]]
    assert result["summary"]["final_loss"]["mean"] == pytest.approx(np.mean(losses))
    assert result["summary"]["final_loss"]["std"] == pytest.approx(np.std(losses, ddof=1))
    assert losses[0] != losses[1]

    # The markdown table without --json (no hold test this time).
    assert seed_sweep.main([*argv, "--no-validate"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].startswith("| seed | final loss |")
    assert any(line.startswith("| 5 | ") for line in table.splitlines())
    assert any(line.startswith("| std | ") for line in table.splitlines())
    assert "hold_success" not in json.loads((out / "seed_sweep.json").read_text())["per_seed"][0]


def test_seed_sweep_user_errors(tmp_path, capsys):
    assert seed_sweep.main([str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert seed_sweep.main([str(tmp_path), "--out", str(tmp_path / "o"), "--set", "num_steps=5"]) == 2
    assert "--steps" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        seed_sweep.main([str(tmp_path), "--out", str(tmp_path / "o"), "--seeds", "0"])
    assert e.value.code == 2


def test_seed_sweep_runs_as_a_script():
    done = subprocess.run([sys.executable, str(REPO / "experiments" / "seed_sweep.py"), "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--seeds" in done.stdout


# --- experiments/scenario_sweep.py ----------------------------------------------------------------

SWEEP_ARGS = ["--limit", "3", "--iterations", "2", "--envs", "4", "--attempts", "1", "--block", "2",
              "--budget-pieces", "3", "--threads", "2", *_flags("--set", QUICK_HOLD),
              "--ppo", "policy_hidden_sizes=32,32", "--ppo", "value_hidden_sizes=32,32"]


def _kept(friction, mass_scale):
    """The stand-in refine's kept fraction: distinct for every scenario."""
    return round(friction / (2 * mass_scale), 3)


@pytest.fixture
def fake_refine(monkeypatch):
    """`diffrl refine`'s body replaced: run.json as the real command writes it, a known summary."""
    calls = []

    def cmd_refine(args):
        config = cli_refine.config_from_args(args)
        resolved = refine_workflow.resolve(config)
        hold, ppo_config = resolved.hold, resolved.ppo
        record = refine_workflow.run_record(config, resolved)
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "run.json").write_text(json.dumps(record))
        calls.append({"friction": hold.physics.friction, "mass_scale": hold.physics.mass_scale, "resume": args.resume,
                      "limit": args.limit, "envs": ppo_config.num_envs, "attempts": args.attempts,
                      "explore": record["explore"]})
        kept = _kept(hold.physics.friction, hold.physics.mass_scale)
        objects = {code: {"n": args.limit, "raw_success": 0.0, "adapted_success": 1.0, "fixed_fraction": kept,
                          "kept_fraction": kept, "heldout_adapted_success": None}
                   for code in ("builtin-box", "builtin-cylinder")}
        (out / "summary.json").write_text(json.dumps({"objects": objects, "timings_s": {"train_s": 1.0}}))
        print("refine's own table")  # must not reach the sweep's stdout
        return 0

    monkeypatch.setattr(cli_refine, "cmd_refine", cmd_refine)
    return calls


def test_scenario_sweep_end_to_end(example_dir, tmp_path, capsys, fake_refine):
    out = tmp_path / "sweep"
    argv = [str(example_dir), "--out", str(out), "--frictions", "1.0,0.5", "--mass-scales", "2", *SWEEP_ARGS]
    assert scenario_sweep.main(argv) == 0
    table = capsys.readouterr().out
    assert "refine's own table" not in table
    assert [(c["friction"], c["mass_scale"], c["resume"]) for c in fake_refine] == [(0.5, 2.0, False),
                                                                                    (1.0, 2.0, False)]
    assert fake_refine[0]["limit"] == 3 and fake_refine[0]["envs"] == 4 and fake_refine[0]["attempts"] == 1
    assert fake_refine[0]["explore"] == 0.1  # the sweep's default, passed on to diffrl refine
    result = json.loads((out / "scenario_sweep.json").read_text())
    lines = table.splitlines()
    assert lines[0].startswith("| friction | mass x | raw | adapted | kept |")
    raw_mean = result["scenarios"][0]["mean"]["raw_success"]
    assert lines[2].startswith(f"| 0.5 | 2 | {raw_mean:.3f} | 1.000 | {_kept(0.5, 2):.3f} |")
    assert (out / "scenario_sweep.png").stat().st_size > 1000
    assert [s["name"] for s in result["scenarios"]] == ["friction-0.5_mass-2", "friction-1_mass-2"]
    for s in result["scenarios"]:
        raw = json.loads((out / s["name"] / "raw_validation.json").read_text())
        # The raw hold test ran under the scenario's protocol, as the refine run recorded it.
        physics = raw["protocol"]["physics"]  # protocols are written nested
        assert physics["friction"] == s["friction"] and physics["mass_scale"] == 2.0
        assert raw["protocol"]["hold_s"] == 0.1
        for code, o in s["objects"].items():
            assert raw["objects"][code]["n"] == 3
            assert o["raw_success"] == raw["objects"][code]["success_rate"]
            assert o["kept_fraction"] == _kept(s["friction"], 2.0)
        assert s["mean"]["kept_fraction"] == pytest.approx(_kept(s["friction"], 2.0))
        assert s["mean"]["heldout_adapted_success"] is None and not s["reused"]

    # A rerun with a grown grid reuses finished scenarios and resumes a cut-off one.
    (out / "friction-0.5_mass-1").mkdir()
    (out / "friction-0.5_mass-1" / "run.json").write_text("{}")
    grown = [str(example_dir), "--out", str(out), "--frictions", "0.5", "--mass-scales", "1,2", *SWEEP_ARGS]
    assert scenario_sweep.main([*grown, "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert [(c["friction"], c["mass_scale"], c["resume"]) for c in fake_refine[2:]] == [(0.5, 1.0, True)]
    assert [(s["name"], s["reused"]) for s in again["scenarios"]] == [("friction-0.5_mass-1", False),
                                                                      ("friction-0.5_mass-2", True)]
    assert again["scenarios"][1]["objects"] == result["scenarios"][0]["objects"]


def test_scenario_sweep_user_errors(example_dir, tmp_path, capsys, fake_refine):
    out = tmp_path / "sweep"
    assert scenario_sweep.main([str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert scenario_sweep.main([str(example_dir), "--out", str(out), "--set", "friction=0.3"]) == 2
    assert "--frictions" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        scenario_sweep.main([str(example_dir), "--out", str(out), "--frictions", "0,1"])
    assert e.value.code == 2
    # Other settings than the sweep already in --out had: refused before any work.
    out.mkdir()
    (out / "scenario_sweep.json").write_text(json.dumps({"settings": {"iterations": 99}}))
    assert scenario_sweep.main([str(example_dir), "--out", str(out), *SWEEP_ARGS]) == 2
    err = capsys.readouterr().err
    assert "differs in" in err and "iterations" in err
    assert fake_refine == []


@pytest.mark.skipif(not os.environ.get("DIFFRL_TEST_REFINE_SWEEP"),
                    reason="a real diffrl refine takes about two minutes on a 2-core CPU; "
                           "set DIFFRL_TEST_REFINE_SWEEP=1")
def test_scenario_sweep_with_the_real_refine(example_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = [str(example_dir), "--out", str(out), "--frictions", "0.5", "--mass-scales", "1", *SWEEP_ARGS,
            "--ppo", "num_minibatches=2", "--json"]
    assert scenario_sweep.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    (scenario,) = result["scenarios"]
    summary = json.loads((out / scenario["name"] / "summary.json").read_text())
    for code, o in scenario["objects"].items():
        assert o["n"] == 3 and 0 <= o["kept_fraction"] <= 1
        # The refine environment's raw test and `diffrl validate` agree grasp for grasp in rate.
        assert o["raw_success"] == o["raw_success_refine_env"] == summary["objects"][code]["raw_success"]
    assert scenario["timings_s"]["refine_wall_s"] > 0


# --- experiments/table_clearance.py ---------------------------------------------------------------


def test_clearance_stats_by_hand():
    # 2 poses x 3 grasps (m): pose 0 has one clear grasp, pose 1 none; a margin of 0 counts as clear.
    clearance = np.array([[0.01, -0.02, 0.0], [-0.01, -0.03, -0.001]])
    stats = table_clearance.clearance_stats(clearance, 0.0)
    assert stats == {"grasps": 3, "poses": 2, "clear_pairs": pytest.approx(2 / 6), "poses_with_clear": 1,
                     "grasps_clear_somewhere": pytest.approx(2 / 3), "best_clearance_m": 0.01}
    stricter = table_clearance.clearance_stats(clearance, 0.005)
    assert stricter["clear_pairs"] == pytest.approx(1 / 6)
    assert stricter["grasps_clear_somewhere"] == pytest.approx(1 / 3)
    assert table_clearance.clearance_stats(np.zeros((4, 0)), 0.0)["poses_with_clear"] == 0


def test_table_clearance_end_to_end(example_dir, tmp_path, capsys):
    out = tmp_path / "clearance.json"
    argv = [str(example_dir), "--poses", "3", "--budget-pieces", "3", "--threads", "2", "--out", str(out)]
    assert table_clearance.main([*argv, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert [(r["object"], r["grasps"], r["poses"]) for r in printed["rows"]] == [
        ("builtin-box", 6, 3), ("builtin-cylinder", 6, 3)]
    for r in printed["rows"]:
        assert 0 <= r["clear_pairs"] <= r["grasps_clear_somewhere"] <= 1
        assert 0 <= r["poses_with_clear"] <= 3
        assert (r["clear_pairs"] > 0) == (r["poses_with_clear"] > 0) == (r["best_clearance_m"] >= 0)
    # --scales picks rows; a scale the data lacks leaves nothing, which is an error, not an empty file.
    scale = printed["rows"][0]["scale"]
    assert table_clearance.main([*argv, "--objects", "builtin-box", "--scales", f"{scale},9"]) == 0
    table = capsys.readouterr().out
    assert "builtin-box" in table and "builtin-cylinder" not in table
    out.unlink()
    assert table_clearance.main([*argv, "--scales", "9"]) == 2
    assert "no grasps left" in capsys.readouterr().err and not out.exists()


def test_table_clearance_user_errors(example_dir, tmp_path, capsys):
    assert table_clearance.main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert table_clearance.main([str(example_dir), "--min-robustness", "0.5"]) == 2
    assert "robustness" in capsys.readouterr().err
    assert table_clearance.main([str(example_dir), "--set", "table_margn_m=0.01"]) == 2
    assert "unknown lift protocol field" in capsys.readouterr().err
    assert table_clearance.main([str(example_dir), "--set", "settle_s=-1"]) == 2
    assert "settle_s" in capsys.readouterr().err
    for bad in (["--scales", "0.1,x"], ["--scales", "-1"], ["--poses", "0"], ["--min-robustness", "2"]):
        with pytest.raises(SystemExit) as e:
            table_clearance.main([str(example_dir), *bad])
        assert e.value.code == 2


# --- experiments/hold_by_scale.py -----------------------------------------------------------------


def test_scale_rows_group_by_object_and_scale(example_dir):
    from diffrl_jax.data.dexgraspnet import load_dexgraspnet

    dataset = load_dexgraspnet(example_dir)
    n = len(dataset)
    dataset = dataclasses.replace(dataset, scales=np.where(np.arange(n) % 2 == 0, 0.05, 0.1))
    rows = {"done": np.ones(n, bool), "success": np.arange(n) % 4 == 0,
            "held": np.zeros((n, 6), bool), "penetration_mm": np.arange(n, dtype=float)}
    rows["held"][:, 0] = rows["success"]
    rows["done"][-1] = False  # a row no process ran is left out
    got = hold_by_scale.scale_rows(dataset, rows)
    expected = []
    for k, code in enumerate(dataset.object_codes):
        for scale in (0.05, 0.1):
            m = (dataset.object_index == k) & (dataset.scales == scale) & rows["done"]
            expected.append((code, scale, int(m.sum()), float(rows["success"][m].mean()),
                             float(np.median(np.flatnonzero(m)))))
    assert [(r["object"], r["scale"], r["n"], r["success_rate"], r["penetration_mm_median"])
            for r in got] == expected
    assert all(r["direction_success"][0] == r["success_rate"] and r["direction_success"][1] == 0 for r in got)


def test_hold_by_scale_end_to_end(example_dir, tmp_path, capsys):
    out = tmp_path / "by_scale.json"
    argv = [str(example_dir), "--budget-pieces", "3", "--threads", "2", "--limit", "3", *_flags("--set", QUICK_HOLD)]
    assert hold_by_scale.main([*argv, "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["protocol"]["hold_s"] == 0.1 and printed["backend"] == "mujoco"
    assert [(r["object"], r["n"]) for r in printed["rows"]] == [("builtin-box", 3), ("builtin-cylinder", 3)]
    for r in printed["rows"]:  # one scale per built-in object: its row is the object's rate
        assert r["success_rate"] == printed["objects"][r["object"]]
        assert len(r["direction_success"]) == 6 and r["penetration_mm_median"] >= 0
    assert hold_by_scale.main(argv) == 0
    assert "builtin-cylinder" in capsys.readouterr().out


def test_hold_by_scale_user_errors(example_dir, tmp_path, capsys):
    out = tmp_path / "never.json"
    for bad, message in ((["--set", "impratio=lots", "--out", str(out)], "impratio: 'lots' is not a number"),
                         (["--set", "frition=1", "--out", str(out)], "unknown protocol field"),
                         (["--protocol", "isaac", "--out", str(out)], "unknown protocol"),
                         (["--out", str(tmp_path)], "is a directory")):
        assert hold_by_scale.main([str(example_dir), "--limit", "1", "--budget-pieces", "3", *bad]) == 2
        assert message in capsys.readouterr().err and not out.exists()
    assert hold_by_scale.main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


# --- experiments/random_corrections.py ------------------------------------------------------------


def test_fixed_by_counts_a_failure_once_its_first_hold_is_within_k():
    held = np.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 1, 1]], bool)
    assert random_corrections.attempt_counts(4) == [1, 2, 4]
    assert random_corrections.attempt_counts(6) == [1, 2, 4, 6]
    assert random_corrections.attempt_counts(1) == [1]
    assert random_corrections.fixed_by(held, [1, 2, 4]) == {"1": 0.25, "2": 0.5, "4": 0.75}
    assert random_corrections.fixed_by(np.zeros((0, 4), bool), [1, 4]) == {"1": 0.0, "4": 0.0}


def test_random_actions_depend_only_on_seed_and_row():
    a = random_corrections.random_actions(np.array([3, 7]), 5, 29, 0.5, seed=1)
    b = random_corrections.random_actions(np.array([7]), 5, 29, 0.5, seed=1)
    assert a.shape == (2, 5, 29) and np.array_equal(a[1], b[0])
    assert not np.array_equal(a[0], a[1])
    assert not np.array_equal(a, random_corrections.random_actions(np.array([3, 7]), 5, 29, 0.5, seed=2))
    assert np.abs(a).max() <= 1.0 and np.abs(a).max() > 0.5  # clipped, not squashed
    assert not random_corrections.random_actions(np.array([3]), 2, 29, 0.0, seed=1).any()
    # Later steps of an attempt draw afresh; the first step is the single-step draw.
    assert np.array_equal(random_corrections.random_actions(np.array([3, 7]), 5, 29, 0.5, seed=1, step=0), a)
    assert not np.array_equal(random_corrections.random_actions(np.array([3, 7]), 5, 29, 0.5, seed=1, step=1), a)


def test_per_step_stds_repeat_the_last_and_reject_bad_values():
    import argparse

    from diffrl_jax.cli.common import non_negative_floats

    assert non_negative_floats("0.2,0") == (0.2, 0.0)
    assert [random_corrections.std_of_step((0.2, 0.0), k) for k in range(4)] == [0.2, 0.0, 0.0, 0.0]
    assert [random_corrections.std_of_step((0.1,), k) for k in range(2)] == [0.1, 0.1]
    for bad in ("-1", "0.1,x", "nan", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            non_negative_floats(bad)


def test_random_corrections_end_to_end(example_dir, tmp_path, capsys):
    out = tmp_path / "rc.json"
    argv = [str(example_dir), "--failures", "2", "--attempts", "3", "--budget-pieces", "3", "--threads", "2",
            *_flags("--set", QUICK_HOLD), "--out", str(out)]
    assert random_corrections.main([*argv, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert [(r["object"], r["grasps"]) for r in printed["rows"]] == [("builtin-box", 6), ("builtin-cylinder", 6)]
    for r in printed["rows"]:
        assert r["failures"] == min(2, round(6 * (1 - r["raw_success"])))
        fixed = list(r["fixed_by_attempts"].values())
        assert list(r["fixed_by_attempts"]) == ["1", "2", "3"] and fixed == sorted(fixed)
        assert all(0 <= v <= 1 for v in fixed)
    assert printed["hold_tests"] == 12 + 3 * sum(r["failures"] for r in printed["rows"])
    # Two steps per attempt: the first step is the same draw, so nothing fixed is lost;
    # the second runs only the attempts the first did not fix.
    assert random_corrections.main([*argv[:-2], "--steps", "2", "--json"]) == 0
    two = json.loads(capsys.readouterr().out)
    assert two["steps"] == 2 and two["std"] == [0.1, 0.1]
    first = printed["hold_tests"] - 12
    assert first < two["hold_tests"] - 12 <= 2 * first
    for r1, r2 in zip(printed["rows"], two["rows"]):
        assert all(b >= a for a, b in zip(r1["fixed_by_attempts"].values(), r2["fixed_by_attempts"].values()))
    out.unlink()
    assert random_corrections.main([*argv[:-2], "--scales", "9"]) == 2
    assert "no grasps at the given --scales" in capsys.readouterr().err
    assert random_corrections.main([*argv, "--set", "friction=-1"]) == 2
    assert "friction" in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit):
        random_corrections.main([str(example_dir), "--attempts", "0"])
