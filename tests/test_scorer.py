"""The learned lift score of `--select learned`: loss numerics, it learns, round trip, bad input."""

import numpy as np
import pytest

from diffrl_jax.cli.main import main
from diffrl_jax.data.dexgraspnet import load_dexgraspnet, write_dexgraspnet
from diffrl_jax.data.example import example_dataset
from diffrl_jax.errors import DataError
from diffrl_jax.evaluation import scorer as scorer_lib
from diffrl_jax.workflows import tabletop

CONFIG = scorer_lib.ScorerConfig(width=32, depth=2, steps=400, batch_size=64, block_steps=200,
                                 encoding_points=8, encoding_samples=128)


def test_bce_loss_matches_the_formula():
    import jax.numpy as jnp

    logits, labels = jnp.array([2.0, -1.0, 0.5]), jnp.array([1.0, 0.0, 0.0])
    p = 1 / (1 + np.exp(-np.array([2.0, -1.0, 0.5])))
    terms = -np.array([np.log(p[0]), np.log(1 - p[1]), np.log(1 - p[2])])
    np.testing.assert_allclose(scorer_lib.bce_loss(logits, labels, 1.0), terms.mean(), rtol=1e-5)
    weighted = (3 * terms[0] + terms[1] + terms[2]) / 5
    np.testing.assert_allclose(scorer_lib.bce_loss(logits, labels, 3.0), weighted, rtol=1e-5)


def test_auc_counts_ordered_pairs_and_ties():
    assert scorer_lib.auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75  # 3 of 4 (pos, neg) pairs ordered
    assert scorer_lib.auc([1.0, 1.0], [0, 1]) == 0.5
    assert scorer_lib.auc([2.0, 1.0, 0.0], [1, 0, 0]) == 1.0
    assert scorer_lib.auc([0.3, 0.2], [1, 1]) is None


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """A table-top-like dataset of the built-in box: a pair lifts when its pose is upright and
    the palm sits on the +x side; a classifier must read both the grasp and the pose."""
    root = tmp_path_factory.mktemp("pairs")
    dataset, mesh = example_dataset("box", 24, seed=0)
    (root / "meshdata").mkdir()
    from diffrl_jax.data.dexgraspnet import write_mesh

    write_mesh(root, dataset.object_codes[0], mesh)
    rng = np.random.default_rng(0)
    n = 240
    rows = rng.integers(0, len(dataset), n)
    pairs = dataset.take(rows)
    upright = rng.random(n) < 0.5
    up = np.where(upright[:, None], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0])
    success = upright & (pairs.grasps[:, 0] > np.median(pairs.grasps[:, 0]))
    labels = {"up_x": up[:, 0], "up_y": up[:, 1], "up_z": up[:, 2], "success": success}
    write_dexgraspnet(root, pairs, labels=labels)
    return root


def test_the_scorer_learns_and_round_trips(pairs, tmp_path):
    import jax.numpy as jnp

    dataset = load_dexgraspnet(pairs)
    scorer, record = scorer_lib.train_scorer(dataset, CONFIG)
    assert record["pairs"] == 240 and 0 < record["positives"] < 240
    assert record["train_accuracy"] >= 0.9, record
    # The same pair scores lower when the pose is the other one.
    g = jnp.asarray(dataset.grasps[dataset.extras["success"] > 0][:5], jnp.float32)
    from diffrl_jax.diffusion.train import grasp_training_data

    _, conds, _, _ = grasp_training_data(dataset, CONFIG, only_success=False)
    upright = scorer.score(g, jnp.asarray(conds[0]), jnp.array([0.0, 0.0, 1.0]))
    side = scorer.score(g, jnp.asarray(conds[0]), jnp.array([1.0, 0.0, 0.0]))
    assert np.all(np.asarray(upright) > np.asarray(side))
    scorer_lib.save_scorer(tmp_path / "s", scorer, CONFIG, record)
    loaded, config = scorer_lib.load_scorer(tmp_path / "s")
    assert config == CONFIG
    np.testing.assert_allclose(loaded.score(g, jnp.asarray(conds[0]), jnp.array([0.0, 0.0, 1.0])), upright,
                               rtol=1e-6)
    with pytest.raises(DataError, match="already holds a scorer"):
        tabletop.run_train_scorer(pairs, tmp_path / "s", CONFIG)


def test_bad_scorer_input(pairs, tmp_path, capsys):
    dataset = load_dexgraspnet(pairs)
    with pytest.raises(DataError, match="not a table-top dataset"):
        scorer_lib.train_scorer(dataset.take(np.arange(4)).__class__(
            dataset.grasps, dataset.scales, dataset.object_index, dataset.object_codes, root=dataset.root), CONFIG)
    one_label = dataset.take(np.flatnonzero(dataset.extras["success"] > 0))
    with pytest.raises(DataError, match="needs both"):
        scorer_lib.train_scorer(one_label, CONFIG)
    with pytest.raises(DataError, match="no scorer checkpoint"):
        scorer_lib.load_scorer(tmp_path)
    assert main(["train-scorer", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["train-scorer", str(pairs), "--out", str(tmp_path / "o"), "--set", "width=0"]) == 2
    assert "width" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # --select learned without a scorer.
    assert main(["evaluate", str(tmp_path / "missing"), "--out", str(tmp_path / "e"), "--select", "learned"]) == 2
    assert "--select learned needs --scorer" in capsys.readouterr().err
