"""`diffrl robustness` labels a dataset; `diffrl train --min-robustness` trains on the robust part."""

import json

import numpy as np
import pytest

from diffrl_jax import checkpoint
from diffrl_jax.cli.main import main
from diffrl_jax.data import dexgraspnet
from tests._paths import SHARED_DATA, requires_shared_data

BOTTLE = "sem-Bottle-437678d4bc6be981c8724d5673a063a6"
TINY_SETS = ["width=32", "depth=1", "time_dim=16", "block_steps=5", "warmup_steps=2",
             "checkpoint_every=5", "encoding_points=16", "encoding_samples=256"]


@requires_shared_data
def test_label_then_train_on_the_robust_grasps(tmp_path, capsys):
    out = tmp_path / "labelled"
    argv = ["robustness", str(SHARED_DATA), "--objects", BOTTLE, "--limit", "6", "--samples", "2",
            "--set", "hold_s=0.2", "--out", str(out), "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    labelled = dexgraspnet.load_dexgraspnet(out)
    values = labelled.extras["robustness"]
    assert len(labelled) == 6 and set(np.unique(values)) <= {0.0, 0.5, 1.0}
    r = report["objects"][BOTTLE]
    assert r["n"] == 6 and r["mean"] == pytest.approx(values.mean())
    assert report["perturbation"]["samples"] == 2
    source = dexgraspnet.load_dexgraspnet(SHARED_DATA, objects=[BOTTLE]).first_per_object(6)
    np.testing.assert_allclose(labelled.grasps, source.grasps, atol=1e-9)

    # The output is never overwritten, nor the source changed in place.
    assert main(argv) == 2
    assert "not an empty directory" in capsys.readouterr().err
    assert main(["robustness", str(out), "--out", str(out)]) == 2
    assert "must differ" in capsys.readouterr().err

    threshold = float(values.max())
    ckpt = tmp_path / "ckpt"
    sets = [x for item in TINY_SETS for x in ("--set", item)]
    assert main(["train", str(out), "--out", str(ckpt), "--steps", "5", "--batch", "8",
                 "--min-robustness", str(threshold), *sets]) == 0
    info = checkpoint.load_config(ckpt)["dataset"]
    assert info["num_grasps"] == int(np.sum(values >= threshold))
    assert info["min_robustness"] == threshold


@requires_shared_data
def test_min_robustness_needs_the_label(tmp_path, capsys):
    assert main(["train", str(SHARED_DATA), "--out", str(tmp_path / "c"), "--min-robustness", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "no 'robustness' label" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["robustness", "/nonexistent/dir", "--out", "/tmp/never"], "does not exist"),
    (["robustness", "/nonexistent/dir", "--out", "/tmp/never", "--perturb", "samples=0"],
     "samples must be a positive integer"),
    (["robustness", "/nonexistent/dir", "--out", "/tmp/never", "--perturb", "noise=1"],
     "unknown robustness field"),
    (["robustness", "/nonexistent/dir", "--out", "/tmp/never", "--perturb", "translation_m=x"],
     "not a number"),
])
def test_bad_input_exits_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_min_robustness_out_of_range_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "x", "--out", "y", "--min-robustness", "1.5"])
    assert exc.value.code == 2
    assert "[0, 1]" in capsys.readouterr().err
