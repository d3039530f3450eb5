"""`diffrl bench`: every figure it prints is a measured rate with its batch, device and JIT time.

Only the cheap stages run here (diffusion training and sampling, small
batches); the simulation stages share their code paths with the hold-test,
refiner and sharding tests. Tests never assert on speed, only that figures
are finite, positive and complete.
"""

import json
import math

import pytest

from diffrl_jax.cli.main import main


def test_bench_json_has_every_field(capsys):
    assert main(["bench", "--stages", "train", "sample", "--batch", "train=32", "--batch", "sample=64,128",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["devices"] >= 1 and report["device"]
    figures = report["figures"]
    assert [(f["stage"], f["batch"]) for f in figures] == [("train", 32), ("sample", 64), ("sample", 128)]
    for f in figures:
        assert math.isfinite(f["value"]) and f["value"] > 0
        assert f["jit_s"] > 0 and f["run_s"] > 0 and f["unit"] and f["device"]
        assert f["devices"] == report["devices"]
    assert figures[0]["extra"]["samples_per_s"] == pytest.approx(32 * figures[0]["value"])


@pytest.mark.parametrize("argv, message", [
    (["bench", "--batch", "physic=4"], "unknown stage 'physic'"),
    (["bench", "--batch", "train=a,b"], "comma-separated integers"),
    (["bench", "--batch", "train=0"], "must be positive"),
])
def test_bench_bad_input_exits_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
