"""`diffrl propose` and `diffrl validate` end to end (MuJoCo-C backend) and bad input."""

import json

import pytest

from diffrl_jax.cli.main import main


def test_propose_then_validate(tmp_path, capsys):
    out = tmp_path / "box"
    assert main(["propose", "--object", "builtin:box", "--n", "4", "--out", str(out)]) == 0
    report_path = tmp_path / "report.json"
    assert main(["validate", str(out), "--backend", "mujoco", "--json", "--out", str(report_path)]) == 0
    printed = json.loads(capsys.readouterr().out.split("\n", 1)[1])  # after propose's line
    written = json.loads(report_path.read_text())
    assert printed == written
    assert set(written) >= {"protocol", "backend", "device", "objects", "grasps_per_s",
                            "physics_steps_per_s", "jit_s"}
    r = written["objects"]["builtin-box"]
    assert r["n"] == 4 and len(r["success"]) == 4 and len(r["direction_success"]) == 6
    assert 0.0 <= r["success_rate"] <= 1.0 and r["penetration_mm_median"] >= 0


@pytest.mark.parametrize("argv, message", [
    (["validate", "/nonexistent/dir"], "does not exist"),
    (["validate", "/nonexistent/dir", "--set", "friction=-1"], "protocol field physics.friction must be positive"),
    (["validate", "/nonexistent/dir", "--set", "physics.friction=-1"], "physics.friction must be positive"),
    (["validate", "/nonexistent/dir", "--set", "squeeze.depth_m=x"], "squeeze.depth_m: 'x' is not a number"),
    (["validate", "/nonexistent/dir", "--set", "friction"], "FIELD=VALUE"),
    (["validate", "/nonexistent/dir", "--set", "frition=1"], "unknown protocol field"),
    (["propose", "--object", "builtin:teapot", "--out", "/tmp/never"], "unknown built-in object"),
    (["propose", "--object", "/nonexistent.obj", "--out", "/tmp/never"], "no such mesh file"),
])
def test_bad_input_exits_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
