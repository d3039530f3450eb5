"""The built-in example dataset: written in DexGraspNet's format, fingertips on the surface."""

import numpy as np
import pytest

from diffrl_jax.cli.main import main
from diffrl_jax.data.dexgraspnet import load_dexgraspnet
from diffrl_jax.data.example import example_dataset
from diffrl_jax.evaluation.check import check_dataset


def test_example_cli_round_trip(tmp_path, capsys):
    out = tmp_path / "example"
    assert main(["data", "example", str(out), "--objects", "cylinder", "mug", "--n", "6"]) == 0
    dataset = load_dexgraspnet(out)
    assert dataset.object_codes == ("builtin-cylinder", "builtin-mug")
    assert len(dataset) == 12
    report = check_dataset(dataset)
    for code, r in report["objects"].items():
        assert r["fingertip_surface_mm_median"] < 0.5, (code, r)
        assert r["penetration_mm_max"] < 1.0, (code, r)
        assert r["joint_limit_violations"]["count"] == 0


def test_example_is_deterministic():
    a, text_a = example_dataset("box", 3, seed=7)
    b, text_b = example_dataset("box", 3, seed=7)
    np.testing.assert_array_equal(a.grasps, b.grasps)
    assert text_a == text_b
    c, _ = example_dataset("box", 3, seed=8)
    assert not np.allclose(a.grasps, c.grasps)


def test_example_bad_object_writes_nothing(tmp_path, capsys):
    out = tmp_path / "example"
    assert main(["data", "example", str(out), "--objects", "box", "teapot"]) == 2
    assert "unknown built-in object 'teapot'" in capsys.readouterr().err
    assert not out.exists()


def test_example_bad_count():
    with pytest.raises(SystemExit):
        main(["data", "example", "unused", "--n", "0"])
