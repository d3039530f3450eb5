"""`diffrl data check`: the frame test against real DexGraspNet grasps, and the CLI."""

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from _paths import SHARED_DATA, requires_shared_data
from diffrl_jax.cli.main import main
from diffrl_jax.data import grasps as grasp_lib
from diffrl_jax.data import rotations
from diffrl_jax.data.dexgraspnet import load_dexgraspnet
from diffrl_jax.evaluation.check import check_dataset

pytestmark = requires_shared_data
BOTTLE = "sem-Bottle-437678d4bc6be981c8724d5673a063a6"
KEYS = {"n_grasps", "scales", "joint_limit_violations", "fingertip_surface_mm_median",
        "penetration_mm_median", "penetration_mm_max"}


@pytest.fixture(scope="module")
def dataset():
    return load_dexgraspnet(SHARED_DATA)


@pytest.fixture(scope="module")
def report(dataset):
    return check_dataset(dataset)


def test_fingertips_on_the_surface(report):
    """Right palm frame, Euler convention and scale: tips within ~1 mm."""
    assert len(report["objects"]) == 3
    for code, r in report["objects"].items():
        assert KEYS <= set(r), code
        assert r["fingertip_surface_mm_median"] < 3.0, (code, r)
        assert r["penetration_mm_median"] < 3.0, (code, r)
        assert r["penetration_mm_max"] >= r["penetration_mm_median"]


def test_counts_scales_and_limits(report, dataset):
    r = report["objects"][BOTTLE]
    assert r["n_grasps"] == 248
    assert sum(r["scales"].values()) == 248
    assert set(r["scales"]) <= {"0.06", "0.08", "0.1", "0.12", "0.15"}
    # DexGraspNet treats joint limits as soft: many grasps exceed them a little.
    subset = dataset.for_object(BOTTLE)
    worst = grasp_lib.joint_limit_violation(subset.grasps).max(-1)
    assert r["joint_limit_violations"]["count"] == int(np.sum(worst > 1e-3)) > 0
    np.testing.assert_allclose(r["joint_limit_violations"]["worst_rad"], worst.max())


def _with_grasps(dataset, grasps):
    return dataclasses.replace(dataset, grasps=grasps)


def test_wrong_conventions_put_tips_centimetres_away(dataset):
    """The check can fail: a wrong Euler order or scale moves the tips off the surface."""
    bottle = dataset.for_object(BOTTLE)
    t, euler, joints = grasp_lib.grasps_to_dexgraspnet_qpos(bottle.grasps)
    # Rotating about the moving axes ('rxyz': Rx(a) Ry(b) Rz(c)) instead of static ones.
    zero = np.zeros_like(euler[:, 0])

    def axis(i):
        angles = [zero, zero, zero]
        angles[i] = euler[:, i]
        return rotations.euler_sxyz_to_matrix(np.stack(angles, -1))

    wrong_r = axis(0) @ axis(1) @ axis(2)
    wrong = check_dataset(_with_grasps(bottle, grasp_lib.make_grasps(t, wrong_r, joints)))
    assert wrong["objects"][BOTTLE]["fingertip_surface_mm_median"] > 10.0
    # The right rotation but the hand placed as if the object were 25 % larger.
    scaled = dataclasses.replace(bottle, scales=bottle.scales * 1.25)
    assert check_dataset(scaled)["objects"][BOTTLE]["fingertip_surface_mm_median"] > 5.0


def test_cli_json(capsys):
    assert main(["data", "check", str(SHARED_DATA), "--json", "--objects", BOTTLE]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["objects"]) == [BOTTLE]
    assert KEYS <= set(out["objects"][BOTTLE])


def test_cli_table(capsys):
    assert main(["data", "check", str(SHARED_DATA), "--objects", BOTTLE]) == 0
    out = capsys.readouterr().out
    assert BOTTLE in out and "tip mm" in out


@pytest.mark.parametrize("argv, message", [
    (["data", "check", "/definitely/not/here"], "does not exist"),
    (["data", "check", str(SHARED_DATA), "--objects", "no-such-object"], "unknown object code"),
])
def test_cli_user_errors(argv, message, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and message in captured.err


def test_cli_empty_dir_and_no_traceback(tmp_path):
    """The installed entry point: a clear message, exit 2, no traceback."""
    (tmp_path / "grasps").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "diffrl_jax.cli.main", "data", "check", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_cli_skip_bad(tmp_path, capsys):
    """A bad file stops the check unless --skip-bad, which reports it and goes on."""
    (tmp_path / "grasps").mkdir()
    shutil.copy(SHARED_DATA / "grasps" / f"{BOTTLE}.npy", tmp_path / "grasps")
    shutil.copytree(SHARED_DATA / "meshdata" / BOTTLE, tmp_path / "meshdata" / BOTTLE)
    (tmp_path / "grasps" / "broken.npy").write_bytes(b"not a numpy file")
    assert main(["data", "check", str(tmp_path), "--json"]) == 2
    captured = capsys.readouterr()
    assert "broken" in captured.err and "--skip-bad" in captured.err and captured.out == ""
    assert main(["data", "check", str(tmp_path), "--json", "--skip-bad"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert list(out["objects"]) == [BOTTLE] and "broken" in out["skipped"]
    assert "warning: skipped broken" in captured.err


def test_cli_bad_hull_cap():
    with pytest.raises(SystemExit) as exc:
        main(["data", "check", str(SHARED_DATA), "--max-hull-vertices", "2"])
    assert exc.value.code == 2
