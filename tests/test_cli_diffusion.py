"""`diffrl train` and `diffrl sample` end to end on the shared DexGraspNet sample (tiny model)."""

import argparse
import json

import numpy as np
import pytest

from diffrl_jax.cli import diffusion as cli_diffusion
from diffrl_jax.cli import main as cli_main
from diffrl_jax.data import dexgraspnet
from diffrl_jax.data import grasps as grasp_lib
from diffrl_jax.errors import DiffrlError
from tests._paths import SHARED_DATA, requires_shared_data

TINY_SETS = ["width=32", "depth=1", "time_dim=16", "block_steps=10", "warmup_steps=2",
             "checkpoint_every=10", "encoding_points=16", "encoding_samples=256"]
BOTTLE = "sem-Bottle-437678d4bc6be981c8724d5673a063a6"


def _parser() -> argparse.ArgumentParser:
    parser = cli_main.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "train" not in commands.choices:  # until main.py wires add_commands in
        cli_diffusion.add_commands(commands)
    return parser


def _run(argv) -> int:
    args = _parser().parse_args([str(a) for a in argv])
    return args.func(args)


@requires_shared_data
def test_train_resume_and_sample(tmp_path, capsys):
    ckpt, out = tmp_path / "ckpt", tmp_path / "samples"
    sets = [x for item in TINY_SETS for x in ("--set", item)]
    assert _run(["train", SHARED_DATA, "--out", ckpt, "--steps", 20, "--batch", 16, "--json", *sets]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 20 and np.isfinite(summary["loss"])
    assert sorted(p.name for p in ckpt.iterdir()) == ["10", "20", "loss.png", "metrics.jsonl"]

    with pytest.raises(DiffrlError, match="--resume"):
        _run(["train", SHARED_DATA, "--out", ckpt, "--steps", 30])
    with pytest.raises(DiffrlError, match="width"):
        _run(["train", SHARED_DATA, "--out", ckpt, "--resume", "--set", "width=64"])
    assert _run(["train", SHARED_DATA, "--out", ckpt, "--steps", 30, "--resume"]) == 0
    rows = [json.loads(line) for line in (ckpt / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30]
    capsys.readouterr()

    # Two calls fill one output directory; the first object stays.
    assert _run(["sample", ckpt, "--object", BOTTLE, "--n", 5, "--steps", 2, "--out", out, "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["seen_in_training"] and first["checkpoint_step"] == 30 and first["steps"] == 2
    assert _run(["sample", ckpt, "--object", "builtin:box", "--n", 3, "--sampler", "ddpm", "--out", out]) == 0
    dataset = dexgraspnet.load_dexgraspnet(out)
    assert dataset.object_codes == ("builtin-box", BOTTLE)
    assert np.bincount(dataset.object_index).tolist() == [3, 5]
    assert grasp_lib.joint_limit_violation(dataset.grasps).max() == 0.0
    np.testing.assert_allclose(dataset.for_object(BOTTLE).scales, first["scale"])

    with pytest.raises(DiffrlError, match="unknown object"):
        _run(["sample", ckpt, "--object", "no-such-object", "--n", 2, "--out", out])
    with pytest.raises(DiffrlError, match="DDPM"):
        _run(["sample", ckpt, "--object", BOTTLE, "--n", 2, "--sampler", "ddpm", "--steps", 5, "--out", out])


def test_train_rejects_bad_input(tmp_path):
    with pytest.raises(DiffrlError, match="does not exist"):
        _run(["train", tmp_path / "missing", "--out", tmp_path / "ckpt"])
    with pytest.raises(DiffrlError, match="FIELD=VALUE"):
        _run(["train", tmp_path, "--out", tmp_path / "ckpt", "--set", "width"])
    with pytest.raises(DiffrlError, match="no checkpoint|does not exist"):
        _run(["sample", tmp_path / "none", "--object", "builtin:box", "--n", 1, "--out", tmp_path / "o"])


def _train_state(ckpt, step):
    """Every leaf of the TrainState saved at `step` (params, EMA, optimizer state, key, step)."""
    import jax

    from diffrl_jax import checkpoint
    from diffrl_jax.diffusion import pipeline
    from diffrl_jax.diffusion.config import DiffusionConfig
    from diffrl_jax.diffusion.model import make_denoiser

    saved = checkpoint.load_config(ckpt, step)
    target = pipeline.abstract_train_state(DiffusionConfig.from_dict(saved["diffusion"]),
                                           make_denoiser(**saved["model_kwargs"]))
    state, _ = checkpoint.restore(ckpt, target, step)
    return [np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
            for x in jax.tree.leaves(state)]


@requires_shared_data
def test_resume_past_a_damaged_newest_checkpoint_ends_where_an_uninterrupted_run_does(tmp_path, capsys):
    """The newest step's `state/_sharding` overwritten: --resume moves it aside, warns, goes on from
    the step before, and ends bitwise where the run that was never interrupted ended."""
    import shutil

    full, damaged = tmp_path / "full", tmp_path / "damaged"
    sets = [x for item in TINY_SETS for x in ("--set", item)]
    assert cli_main.main(["train", str(SHARED_DATA), "--out", str(full), "--steps", "20", "--batch", "16",
                          *sets]) == 0
    shutil.copytree(full, damaged)
    (damaged / "20" / "state" / "_sharding").write_text("overwritten{")
    (damaged / "loss.png").unlink()
    capsys.readouterr()
    assert cli_main.main(["train", str(SHARED_DATA), "--out", str(damaged), "--steps", "20", "--resume"]) == 0
    err = capsys.readouterr().err
    moved = damaged.resolve() / "20.damaged"
    assert "warning: checkpoint step 20 is damaged (" in err, err
    assert f"moved to {moved}; resuming from step 10" in err and f"resuming {damaged} at step 10" in err
    assert sorted(p.name for p in damaged.iterdir()) == ["10", "20", "20.damaged", "loss.png", "metrics.jsonl"]
    assert (moved / "state" / "_sharding").read_text() == "overwritten{"  # kept as it was, not deleted
    for a, b in zip(_train_state(full, 20), _train_state(damaged, 20), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    rows = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (full, damaged)]
    assert [(r["step"], r["loss"]) for r in rows[0]] == [(r["step"], r["loss"]) for r in rows[1]]
