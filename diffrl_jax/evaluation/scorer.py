"""A learned lift-success score of a grasp for an object in a resting pose: `--select learned`.

A small MLP classifier, trained on a table-top dataset (`diffrl tabletop`):
every pair there clears the table, and its `success` label says whether it
lifted. Its input is the grasp (normalised), the object's shape encoding
(`objects.encoding`, as the diffusion model's condition) and the pose's
up-direction; its output a logit of lift success. Nothing is simulated to
score: pose sampling ranks a pose's table-clear samples by it and executes
the best.

`train_scorer` is the host loop around one jitted block of AdamW steps
(`lax.scan`); `Scorer.score` is pure and jittable. A scorer directory holds
a checkpoint (`diffrl_jax.checkpoint`) with the JSON config needed to
rebuild it: {"format": FORMAT, "config", "normaliser", "encoding", "data"}.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffrl_jax import configs
from diffrl_jax.configs import integer, non_negative, positive
from diffrl_jax.errors import DataError

FORMAT = "diffrl_jax.scorer/1"
COND_SCALE = 10.0  # encoding metres -> about unit range, as the denoiser's


@dataclasses.dataclass(frozen=True)
class ScorerConfig:
    width: int = integer(256, min=1)
    depth: int = integer(2, min=1)
    steps: int = integer(2000, min=1)
    batch_size: int = integer(256, min=1)
    learning_rate: float = positive(1e-3)
    weight_decay: float = non_negative(1e-4)
    block_steps: int = integer(200, min=1)
    seed: int = 0
    # The object encoding (as the diffusion model's: objects.encoding).
    encoding_points: int = integer(128, min=1)
    encoding_radius: float = positive(0.15)
    encoding_samples: int = integer(2048, min=1)

    def validate(self) -> ScorerConfig:
        return configs.check(self, "scorer config")


class ScoreNet(nn.Module):
    """(grasp `[B, 31]` normalised, cond `[B, C]`, up `[B, 3]`) -> logit `[B]`."""

    width: int
    depth: int

    @nn.compact
    def __call__(self, grasp, cond, up):
        h = jnp.concatenate([grasp, cond * COND_SCALE, up], axis=-1)
        for _ in range(self.depth):
            h = nn.silu(nn.Dense(self.width)(h))
        return nn.Dense(1)(h)[..., 0]


@flax.struct.dataclass
class Scorer:
    """A trained scorer: parameters and the grasp normaliser (mean, std `[31]`)."""

    params: dict
    mean: jnp.ndarray
    std: jnp.ndarray
    net: ScoreNet = flax.struct.field(pytree_node=False)

    def score(self, grasps, cond, up):
        """grasps `[..., 31]`, cond `[C]`, up `[..., 3]` -> logit `[...]` (higher: more likely to lift)."""
        shape = grasps.shape[:-1]
        g = ((grasps - self.mean) / self.std).reshape(-1, grasps.shape[-1])
        u = jnp.broadcast_to(up, shape + (3,)).reshape(-1, 3)
        c = jnp.broadcast_to(cond, (g.shape[0], cond.shape[-1]))
        return self.net.apply(self.params, g, c, u).reshape(shape)


def bce_loss(logits, labels, positive_weight):
    """Mean binary cross-entropy, positives weighted by `positive_weight` (balances a rare class)."""
    weights = jnp.where(labels > 0.5, positive_weight, 1.0)
    return jnp.sum(weights * optax.sigmoid_binary_cross_entropy(logits, labels)) / jnp.sum(weights)


def _make_block(config: ScorerConfig, net: ScoreNet, optimizer):
    def step(carry, _):
        params, opt_state, key, data, positive_weight = carry
        key, sub = jax.random.split(key)
        index = jax.random.randint(sub, (config.batch_size,), 0, data["x"].shape[0])

        def loss_fn(p):
            logits = net.apply(p, data["x"][index], data["cond"][data["cond_index"][index]], data["up"][index])
            return bce_loss(logits, data["y"][index], positive_weight)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, key, data, positive_weight), loss

    @functools.partial(jax.jit, static_argnums=2)
    def block(carry, _unused, steps):
        carry, losses = jax.lax.scan(step, carry, None, length=steps)
        return carry, jnp.mean(losses)

    return block


def _features(dataset, config: ScorerConfig):
    """Every pair of a table-top dataset -> (grasps [N, 31], conditions [M, C], condition index [N],
    up-directions [N, 3]): the scorer's inputs, for training and for scoring alike."""
    from diffrl_jax.diffusion.train import grasp_training_data, pose_conditions

    samples, conds, cond_index, _ = grasp_training_data(dataset, config, only_success=False)
    return samples, conds, cond_index, pose_conditions(dataset, np.ones(len(dataset), bool))


def train_scorer(dataset, config: ScorerConfig = ScorerConfig(), progress=None):
    """A `Scorer` fitted to the `success` labels of a table-top dataset (`GraspDataset`), and
    its training record {"pairs", "positives", "loss", "train_accuracy"}."""
    from diffrl_jax.diffusion.train import POSE_LABELS

    config.validate()
    if "success" not in dataset.extras or any(n not in dataset.extras for n in POSE_LABELS):
        raise DataError(f"{dataset.root}: not a table-top dataset (no success and up-direction labels); "
                        "make one with `diffrl tabletop`")
    y = np.asarray(dataset.extras["success"], np.float32)
    if y.min() == y.max():
        raise DataError(f"{dataset.root}: every pair is labelled {'lifted' if y[0] else 'not lifted'}: "
                        "a classifier needs both")
    samples, conds, cond_index, up = _features(dataset, config)
    mean, std = samples.mean(0), np.maximum(samples.std(0), 1e-3)
    data = {"x": jnp.asarray((samples - mean) / std, jnp.float32), "cond": jnp.asarray(conds, jnp.float32),
            "cond_index": jnp.asarray(cond_index, jnp.int32), "up": jnp.asarray(up), "y": jnp.asarray(y)}
    net = ScoreNet(config.width, config.depth)
    key = jax.random.key(config.seed)
    key, init_key = jax.random.split(key)
    params = net.init(init_key, data["x"][:1], data["cond"][:1], data["up"][:1])
    optimizer = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
    positive_weight = jnp.float32((1.0 - y.mean()) / y.mean())
    carry = (params, optimizer.init(params), key, data, positive_weight)
    block = _make_block(config, net, optimizer)
    done, loss = 0, float("nan")
    while done < config.steps:
        steps = min(config.block_steps, config.steps - done)
        carry, loss = block(carry, None, steps)
        done += steps
        if progress is not None:
            progress(steps)
    params = carry[0]
    logits = net.apply(params, data["x"], data["cond"][data["cond_index"]], data["up"])
    accuracy = float(jnp.mean((logits > 0) == (data["y"] > 0.5)))
    scorer = Scorer(params, jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32), net)
    return scorer, {"pairs": int(len(y)), "positives": int(y.sum()), "loss": float(loss),
                    "train_accuracy": accuracy}


def auc(scores, labels) -> float | None:
    """The area under the ROC curve: the chance a random positive scores above a random negative
    (ties count half). None without both classes."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    pos, neg = scores[labels], scores[~labels]
    if not len(pos) or not len(neg):
        return None
    ranks = np.empty(len(scores))
    order = np.argsort(scores, kind="stable")
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average ranks over ties
        tie = scores == value
        ranks[tie] = ranks[tie].mean()
    return float((ranks[labels].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def dataset_scores(scorer: Scorer, dataset, config: ScorerConfig) -> np.ndarray:
    """The scorer's logit of every pair of a table-top dataset `[N]`."""
    samples, conds, cond_index, up = _features(dataset, config)
    g = (jnp.asarray(samples, jnp.float32) - scorer.mean) / scorer.std
    return np.asarray(scorer.net.apply(scorer.params, g, jnp.asarray(conds, jnp.float32)[cond_index], jnp.asarray(up)))


def save_scorer(directory, scorer: Scorer, config: ScorerConfig, record: dict) -> None:
    from diffrl_jax import checkpoint

    saved = {"format": FORMAT, "config": dataclasses.asdict(config), "record": record,
             "normaliser": {"mean": np.asarray(scorer.mean).tolist(), "std": np.asarray(scorer.std).tolist()}}
    checkpoint.save(directory, 0, scorer.params, saved)


def load_scorer(directory) -> tuple[Scorer, ScorerConfig]:
    """The scorer saved in `directory`; `DataError` when it is not one."""
    from diffrl_jax import checkpoint

    directory = pathlib.Path(directory)
    if checkpoint.latest_step(directory) is None:
        raise DataError(f"{directory}: no scorer checkpoint there (train one with `diffrl train-scorer`)")
    saved = checkpoint.load_config(directory)
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise DataError(f"{directory} is not a scorer checkpoint (format {saved.get('format')!r})")
    config = ScorerConfig(**saved["config"]).validate()
    net = ScoreNet(config.width, config.depth)
    dim = len(saved["normaliser"]["mean"])
    target = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, dim)),
                                             jnp.zeros((1, config.encoding_points + 1)), jnp.zeros((1, 3))))
    params, _ = checkpoint.restore(directory, target)
    return Scorer(params, jnp.asarray(saved["normaliser"]["mean"], jnp.float32),
                  jnp.asarray(saved["normaliser"]["std"], jnp.float32), net), config
