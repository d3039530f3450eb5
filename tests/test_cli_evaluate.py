"""`diffrl evaluate` end to end: a tiny model trained on the shared bottle, two poses,
the MuJoCo-C lift; every output written and parsed; bad input exits 2."""

import json

import pytest

from diffrl_jax.cli.main import main

from _paths import SHARED_DATA, requires_shared_data

TINY = ["width=32", "depth=1", "time_dim=16", "block_steps=10", "warmup_steps=2", "checkpoint_every=10",
        "encoding_points=16", "encoding_samples=256"]
BOTTLE = "sem-Bottle-437678d4bc6be981c8724d5673a063a6"


def o_code(summary, entry):
    return next(code for code, o in summary["objects"].items() if o is entry)


@requires_shared_data
def test_evaluate_writes_summary_and_records(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    sets = [x for item in TINY for x in ("--set", item)]
    assert main(["train", str(SHARED_DATA), "--out", str(ckpt), "--steps", "10", "--batch", "16", *sets]) == 0
    capsys.readouterr()
    out = tmp_path / "eval"
    argv = ["evaluate", str(ckpt), "--objects", BOTTLE, "builtin:box", "--poses", "2", "--candidates", "4",
            "--backend", "mujoco", "--budget-pieces", "8", "--videos", "0", "--out", str(out), "--json",
            "--select", "check", "one-shot", "first"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    summary = json.loads((out / "summary.json").read_text())
    assert printed == summary
    assert set(summary["objects"]) == {BOTTLE, "builtin-box"}
    for o in summary["objects"].values():
        assert o["n"] == 2 and 0 <= o["successes"] <= 2
        assert 0.0 <= o["ci_low"] <= o["rate"] <= o["ci_high"] <= 1.0
        assert set(o["timings_s"]) == {"settle_s", "sample_s", "select_s", "lift_s"}
    records = [json.loads(line) for line in (out / "poses.jsonl").read_text().splitlines()]
    assert len(records) == 4 and {r["object"] for r in records} == {BOTTLE, "builtin-box"}
    for r in records:
        assert len(r["grasp"]) == 31 and len(r["object_pose"]) == 7
        assert r["object_pose"][2] > 0  # resting on the table (top at z = 0)
        if r["clear_candidates"] == 0:
            assert not r["success"]
        # The default selection hold-tests up to --check-top clear candidates.
        assert 0 <= r["checked"] <= min(4, round(r["clear_candidates"] * 4))
        assert r["check_directions_held"] in range(-1, 7)
        assert (r["check_directions_held"] == -1) == (r["checked"] == 0)
    for o in summary["objects"].values():
        assert o["select"] == "check"
        checked = sum(r["checked"] for r in records if r["object"] == o_code(summary, o))
        assert o["check_physics_steps"] == checked * 775  # the strict hold test's steps per grasp
        # Every mode on the same poses and samples; only check spends physics steps choosing.
        modes = o["pose_sampling"]
        assert list(modes) == ["check", "one-shot", "first"]
        assert modes["check"]["physics_steps_choosing"] == o["check_physics_steps"]
        assert modes["one-shot"]["physics_steps_choosing"] == modes["first"]["physics_steps_choosing"] == 0
        assert modes["check"]["success"] == o["rate"] and modes["check"]["n_poses"] == 2
        for m in modes.values():
            assert 0.0 <= m["ci95"][0] <= m["success"] <= m["ci95"][1] <= 1.0
    for r in records:
        one_shot, first = r["compare"]["one-shot"], r["compare"]["first"]
        assert one_shot["chosen"] == 0
        if one_shot["success"]:  # the first sample was clear: first chose it too, and lifted it alike
            assert first["chosen"] == 0 and first["success"]
    assert list(summary["mean"]["pose_sampling"]) == ["check", "one-shot", "first"]
    assert summary["config"]["compare"] == ["one-shot", "first"]
    # A finished evaluation is never overwritten.
    assert main(argv) == 2
    assert "already holds an evaluation" in capsys.readouterr().err

    # --scale: every object at that scale (the bottle's training scales are 0.06-0.15, 0.09 is not one).
    scaled = ["evaluate", str(ckpt), "--objects", BOTTLE, "--poses", "1", "--candidates", "2", "--backend", "mujoco",
              "--budget-pieces", "8", "--videos", "0", "--select", "first", "--json"]
    assert main([*scaled, "--scale", "0.09", "--out", str(tmp_path / "scaled")]) == 0
    bottle = json.loads(capsys.readouterr().out)["objects"][BOTTLE]
    assert bottle["scale"] == 0.09 and bottle["seen_in_training"] is False
    assert main([*scaled, "--scale", "-1", "--out", str(tmp_path / "never")]) == 2
    assert "--scale must be a positive number" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
    # A model trained without a pose condition, asked to sample for the resting pose.
    assert main([*scaled, "--pose", "on", "--out", str(tmp_path / "never")]) == 2
    assert "trained without a pose condition" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
    assert summary["objects"][BOTTLE]["pose_condition"] is False  # --pose auto on this model


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "/nonexistent", "--out", "/tmp/never"], "/nonexistent"),
    (["evaluate", "/nonexistent", "--out", "/tmp/never", "--set", "lift_height_m=0.1"], "exceeds the lift height"),
    (["evaluate", "/nonexistent", "--out", "/tmp/never", "--set", "lift_hieght_m=1"], "unknown lift protocol field"),
    (["evaluate", "/nonexistent", "--out", "/tmp/never", "--select", "check", "check"], "modes must differ"),
])
def test_bad_input_exits_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unknown_selection_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "/nonexistent", "--out", "/tmp/never", "--select", "check", "best"])
    assert e.value.code == 2 and "invalid choice: 'best'" in capsys.readouterr().err
