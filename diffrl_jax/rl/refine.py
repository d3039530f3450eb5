"""The refinement problem on a dataset, and the adapted dataset (host side).

`build_problem` turns a DexGraspNet-format dataset and a scenario (a hold
protocol) into what the refinement environment needs: one simulated object per
(code, scale), its hold-test fields and shape encoding, and a split that holds
out a fifth of each object's grasps from training. `adapt` applies a trained
policy to every grasp and decides, grasp by grasp, what the adapted dataset
keeps: the corrected grasp where a correction holds, the original where it
already held and no correction helps, nothing where neither holds.

Everything here prepares arrays or loops over chunks (not jittable); the
physics and the policy run in the jitted functions of `refine_env` and `ppo`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffrl_jax.data.dexgraspnet import GraspDataset
from diffrl_jax.errors import ConfigError
from diffrl_jax.objects import encoding
from diffrl_jax.rl import refine_env
from diffrl_jax.sim import backends, bank, validate
from diffrl_jax.sim.protocol import HoldProtocol


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
    """A dataset under a scenario, ready for the refinement environment.

    object_id: [N] simulated object (entry) of each dataset row
    heldout:   [N] rows never used in training
    """

    dataset: GraspDataset
    template: bank.SimTemplate
    entries: tuple[validate.Entry, ...]
    prepared: tuple[bank.PreparedObject, ...]
    fields: bank.ObjectFields  # [M, ...]
    encodings: np.ndarray  # [M, E]
    object_id: np.ndarray
    heldout: np.ndarray

    @property
    def protocol(self) -> HoldProtocol:
        return self.template.protocol


def split_heldout(object_index: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """[N] bool: a random `fraction` of each object's rows (rounded, at least one
    when the object has two or more grasps), the same for a given seed."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"held-out fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    heldout = np.zeros(len(object_index), bool)
    for k in np.unique(object_index):
        rows = np.flatnonzero(object_index == k)
        count = int(round(fraction * len(rows)))
        if fraction > 0 and len(rows) >= 2:
            count = max(count, 1)
        heldout[rng.permutation(rows)[:count]] = True
    return heldout


def build_problem(dataset: GraspDataset, protocol: HoldProtocol,
                  budget: bank.ObjectBudget = bank.ObjectBudget(),
                  heldout_fraction: float = 0.2, seed: int = 0,
                  progress: Callable[[int], None] | None = None) -> Problem:
    """Objects, fields, encodings and the held-out split of `dataset`."""
    protocol.validate()
    budget.validate()
    if len(dataset) == 0:
        raise ConfigError("the dataset has no grasps to refine")
    template = bank.make_template(protocol, budget)
    entry_list, prepared, fields, encodings, object_id = prepare_entries(
        dataset, template, lambda entry: validate.prepare_entry(dataset, entry, protocol, budget), progress)
    return Problem(
        dataset=dataset, template=template, entries=entry_list, prepared=prepared, fields=fields,
        encodings=encodings, object_id=object_id, heldout=split_heldout(dataset.object_index, heldout_fraction, seed))


def prepare_entries(dataset: GraspDataset, template, prepare, progress=None):
    """Each (object, scale) entry of `dataset` prepared once: (entries, prepared objects,
    stacked fields, shape encodings [E, D] float32, object_id [N] int32 (a row's entry)).

    `prepare(entry)` -> the entry's `bank.PreparedObject` for `template`; `progress(1)`
    after each entry. The refinement problems of both scenarios are built on it.
    """
    entry_list = tuple(validate.entries(dataset))
    prepared, fields, codes = [], [], []
    object_id = np.zeros(len(dataset), np.int32)
    for m, entry in enumerate(entry_list):
        p = prepare(entry)
        prepared.append(p)
        fields.append(template.fields(p))
        codes.append(encoding.encode_object(dataset.mesh_path(entry.code), entry.scale))
        object_id[entry.rows] = m
        if progress:
            progress(1)
    return entry_list, tuple(prepared), bank.stack_fields(fields), np.stack(codes).astype(np.float32), object_id


def refine_data(problem: Problem, rows: np.ndarray) -> refine_env.RefineData:
    """The environment's data for dataset `rows` (e.g. the training rows)."""
    rows = np.asarray(rows)
    if rows.size == 0:
        raise ConfigError("no grasps to train on (is the held-out fraction too large?)")
    return refine_env.RefineData(
        grasps=jnp.asarray(problem.dataset.grasps[rows], jnp.float32),
        object_id=jnp.asarray(problem.object_id[rows], jnp.int32),
        encodings=jnp.asarray(problem.encodings),
        fields=jax.tree_util.tree_map(jnp.asarray, problem.fields))


def hold_fn(problem: Problem, backend: str | backends.Backend, nthread: int | None = None) -> backends.HoldFn:
    """The one-world hold test of `problem`'s objects on `backend` (a name or a `Backend`)."""
    fields = jax.tree_util.tree_map(jnp.asarray, problem.fields)
    return backends.get(backend, nthread=nthread).world_hold_fn(problem.template, fields, problem.prepared)


def make_env(problem: Problem, config: refine_env.RefineConfig, backend: str | backends.Backend,
             rows: np.ndarray | None = None, nthread: int | None = None) -> refine_env.RefineEnv:
    """The refinement environment over dataset `rows` (default: the training rows)."""
    rows = np.flatnonzero(~problem.heldout) if rows is None else rows
    return refine_env.RefineEnv(problem.template, refine_data(problem, rows),
                                hold_fn(problem, backend, nthread), config)


def add_exploration(policy: Callable, explore: float) -> Callable:
    """`(obs, key) -> action` of `policy` plus N(0, explore^2) noise per component, clipped
    to [-1, 1]; `policy` itself when `explore` is 0."""
    if not (np.isfinite(explore) and explore >= 0):
        raise ConfigError(f"explore must be finite and >= 0, got {explore}")
    if explore == 0:
        return policy

    def exploring(obs, key):
        k_policy, k_noise = jax.random.split(key)
        action = policy(obs, k_policy)
        noise = explore * jax.random.normal(k_noise, action.shape, action.dtype)
        return jnp.clip(action + noise, -1.0, 1.0)

    return exploring


def exploration_schedule(explore: float | Sequence[float], steps: int) -> tuple[float, ...]:
    """The exploration std of each of an episode's `steps` corrections.

    `explore` is one std for every step, or one per step with the last
    repeating (e.g. (0.2, 0): a wide first correction, then the policy's own
    samples from the settled grasp). More values than steps is an error.
    """
    values = (explore,) if np.isscalar(explore) else tuple(explore)
    if not values:
        raise ConfigError("explore needs at least one value")
    if len(values) > steps:
        raise ConfigError(f"explore gives {len(values)} values for episodes of {steps} step(s)")
    for value in values:
        if not (np.isfinite(value) and value >= 0):
            raise ConfigError(f"explore must be finite and >= 0, got {value}")
    return tuple(float(v) for v in values) + (float(values[-1]),) * (steps - len(values))


def make_attempts(env: refine_env.RefineEnv, deterministic_policy: Callable,
                  stochastic_policy: Callable, attempts: int, explore: float | Sequence[float] = 0.0):
    """A jitted `(rows [B], key) -> (grasps [B, K, 31], success [B, K], reward [B, K])`.

    K = `attempts` episodes per dataset row of `env`'s data: the first with the
    deterministic policy (its mean action), the others sampled from the
    policy, with Gaussian noise of standard deviation `explore` added to each
    action component (0: the policy's own spread only; a sequence gives each
    step its own, see `exploration_schedule`). Each episode reports the first
    holding grasp of its steps (or its best-rewarded one).
    Policies are `(obs [O], key) -> action [A]`.
    """
    if attempts < 1:
        raise ConfigError(f"attempts must be at least 1, got {attempts}")
    steps = env.config.steps
    schedule = exploration_schedule(explore, steps)
    # One policy per distinct std; a constant schedule is exactly one policy.
    distinct = list(dict.fromkeys(schedule))
    step_policies = [add_exploration(stochastic_policy, std) for std in distinct]
    branch = jnp.asarray([distinct.index(std) for std in schedule], jnp.int32)

    def per_step(policies):
        if len(policies) == 1:
            return lambda t, obs, key: policies[0](obs, key)
        return lambda t, obs, key: jax.lax.switch(branch[t], policies, obs, key)

    def episode(policy, index, key):
        def body(carry, xs):
            state, best, ok, best_reward = carry
            t, key = xs
            nxt = env.step(state, policy(t, state.obs, key))
            live = (state.done == 0) & ~ok
            take = live & (nxt.info["success"] | (nxt.reward > best_reward))
            best = jnp.where(take, nxt.info["grasp"], best)
            best_reward = jnp.where(take, nxt.reward, best_reward)
            ok = ok | (live & nxt.info["success"])
            state = jax.tree_util.tree_map(lambda a, b: jnp.where(live, a, b), nxt, state)
            return (state, best, ok, best_reward), None

        state = env.start(index)
        carry = (state, state.info["grasp"], jnp.zeros((), bool), jnp.full((), -jnp.inf))
        xs = (jnp.arange(steps), jax.random.split(key, steps))
        (_, best, ok, reward), _ = jax.lax.scan(body, carry, xs)
        return best, ok, reward

    deterministic = per_step([deterministic_policy])
    stochastic = per_step(step_policies)

    def run(rows, key):
        keys = jax.random.split(key, (rows.shape[0], attempts))
        out = [jax.tree_util.tree_map(lambda x: x[:, None], jax.vmap(
            lambda i, k: episode(deterministic, i, k))(rows, keys[:, 0]))]
        if attempts > 1:
            out.append(jax.vmap(jax.vmap(lambda i, k: episode(stochastic, i, k),
                                         in_axes=(None, 0)))(rows, keys[:, 1:]))
        return tuple(jnp.concatenate(parts, axis=1) for parts in zip(*out))

    return jax.jit(run)


def make_raw_test(env: refine_env.RefineEnv):
    """A jitted `(rows [B]) -> (success [B], reward [B], HoldResult)` of the grasps as they are."""
    zero = jnp.zeros(refine_env.ACTION_SIZE)

    def one(index):
        state = env.start(index)
        result = env.hold(state.info["object_id"], state.info["grasp"])
        terms = refine_env.reward_terms(result, zero, env.template, env.config)
        return result.success, sum(terms.values()), result

    return jax.jit(jax.vmap(one))


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        rows = np.arange(start, min(start + size, n))
        yield rows, np.concatenate([rows, np.full(size - len(rows), rows[-1])])


@dataclasses.dataclass(frozen=True)
class Adapted:
    """Per dataset row [N]: the outcome of adaptation.

    raw_success: the grasp held as it was;  success: some attempt's correction held
    keep: kept in the adapted dataset;      refined: kept as corrected (else original)
    grasps: [N, 31] the adapted grasp (the original where not refined)
    """

    raw_success: np.ndarray
    success: np.ndarray
    keep: np.ndarray
    refined: np.ndarray
    grasps: np.ndarray
    raw_reward: np.ndarray
    reward: np.ndarray
    attempts: np.ndarray | None = None  # [N] attempts run on each row (K per round it took part in)


# Round r > 0 of `adapt` draws its keys from fold_in(fold_in(key, _ROUND_SALT), r): apart
# from the first round's fold_in(key, chunk index) for any chunk count.
_ROUND_SALT = 0x7FFF0000


def _best_attempts(g, s, rew):
    """Per row of attempts [B, K]: the best holding attempt (highest reward), else the best one."""
    score = np.where(s, rew, -np.inf)
    best = np.argmax(np.where(s.any(1, keepdims=True), score, rew), axis=1)
    pick = np.arange(len(best))
    return g[pick, best], s[pick, best], rew[pick, best]


def adapt(problem: Problem, env_all: refine_env.RefineEnv, attempts_fn, key: jax.Array,
          chunk: int = 64, progress: Callable[[int], None] | None = None, rounds: int = 1,
          on_round: Callable[[int, int], None] | None = None) -> Adapted:
    """Raw test and `attempts_fn` (see `make_attempts`) on every dataset row.

    `env_all` must be the environment over all rows in dataset order
    (`make_env(problem, config, backend, rows=np.arange(N))`). With `rounds`
    R > 1, the raw failures none of whose attempts held get up to R - 1 more
    rounds of K attempts each (fresh keys), stopping early for a row once one
    holds: the search spends its budget where it is needed. `on_round(r,
    rows)` is called before extra round r with the number of rows it runs;
    `progress` counts rows done in every round.
    """
    if rounds < 1:
        raise ConfigError(f"rounds must be at least 1, got {rounds}")
    n = len(problem.dataset)
    k_attempts = None
    raw_fn = make_raw_test(env_all)
    raw_success, raw_reward = np.zeros(n, bool), np.zeros(n, np.float32)
    success, reward = np.zeros(n, bool), np.zeros(n, np.float32)
    attempts = np.zeros(n, np.int64)
    grasps = np.array(problem.dataset.grasps, np.float64)
    corrected = np.zeros_like(grasps)
    for k, (rows, padded) in enumerate(_chunks(n, chunk)):
        ok, r, _ = jax.device_get(raw_fn(jnp.asarray(padded, jnp.int32)))
        raw_success[rows], raw_reward[rows] = ok[:len(rows)], r[:len(rows)]
        g, s, rew = jax.device_get(attempts_fn(jnp.asarray(padded, jnp.int32), jax.random.fold_in(key, k)))
        k_attempts = s.shape[1]
        corrected[rows], success[rows], reward[rows] = _best_attempts(g[:len(rows)], s[:len(rows)],
                                                                      rew[:len(rows)])
        attempts[rows] += k_attempts
        if progress:
            progress(len(rows))
    for round_ in range(1, rounds):
        left = np.flatnonzero(~success & ~raw_success)
        if left.size == 0:
            break
        if on_round:
            on_round(round_, int(left.size))
        round_key = jax.random.fold_in(jax.random.fold_in(key, _ROUND_SALT), round_)
        for k, (idx, padded) in enumerate(_chunks(left.size, chunk)):
            rows = left[idx]
            g, s, rew = jax.device_get(attempts_fn(jnp.asarray(left[padded], jnp.int32),
                                                   jax.random.fold_in(round_key, k)))
            g, s, rew = _best_attempts(g[:len(rows)], s[:len(rows)], rew[:len(rows)])
            better = s | (rew > reward[rows])  # no row here has held yet
            corrected[rows[better]], success[rows[better]], reward[rows[better]] = g[better], s[better], rew[better]
            attempts[rows] += k_attempts
            if progress:
                progress(len(rows))
    refined = success & (~raw_success | (reward > raw_reward))
    keep = refined | raw_success
    grasps[refined] = corrected[refined]
    return Adapted(raw_success=raw_success, success=success, keep=keep, refined=refined,
                   grasps=grasps, raw_reward=raw_reward, reward=reward, attempts=attempts)


def adapted_dataset(problem: Problem, adapted: Adapted) -> tuple[GraspDataset, dict]:
    """The kept grasps as a dataset, and their labels (name -> [kept]).

    An object none of whose grasps was kept is left out (DexGraspNet's
    format has no empty grasp files).
    """
    keep = adapted.keep
    dataset = dataclasses.replace(problem.dataset.take(keep), grasps=adapted.grasps[keep], extras={})
    present = [code for k, code in enumerate(dataset.object_codes) if np.any(dataset.object_index == k)]
    dataset = dataset.select(present)
    labels = {
        "success": np.ones(int(keep.sum()), bool),
        "refined": adapted.refined[keep],
        "heldout": problem.heldout[keep],
        "source_index": np.flatnonzero(keep).astype(np.int64),
    }
    return dataset, labels


def summary(problem: Problem, adapted: Adapted, revalidated: dict | None = None) -> dict:
    """Per object: raw_success, adapted_success, fixed_fraction, kept_fraction,
    heldout_adapted_success (and their held-out/training parts).

    adapted_success is the success rate of the adapted dataset as `diffrl
    validate` measures it again from disk (`revalidated`: its report); None
    without one.
    heldout_adapted_success: the share of held-out grasps that hold after
    adaptation (corrected or as they were).
    """
    ds = problem.dataset
    out = {}
    for k, code in enumerate(ds.object_codes):
        rows = ds.object_index == k
        fails = rows & ~adapted.raw_success
        held = rows & problem.heldout
        held_fails = held & ~adapted.raw_success
        entry = {
            "n": int(rows.sum()),
            "raw_success": float(adapted.raw_success[rows].mean()),
            "adapted_success": None,
            "fixed_fraction": float(adapted.refined[fails].mean()) if fails.any() else None,
            "kept_fraction": float(adapted.keep[rows].mean()),
            "heldout_adapted_success": float(adapted.keep[held].mean()) if held.any() else None,
            "heldout_n": int(held.sum()),
            "heldout_raw_success": float(adapted.raw_success[held].mean()) if held.any() else None,
            "heldout_fixed_fraction": (float(adapted.refined[held_fails].mean())
                                       if held_fails.any() else None),
            "refined_fraction": float(adapted.refined[rows].mean()),
        }
        if adapted.attempts is not None:
            entry["attempts_mean"] = float(adapted.attempts[rows].mean())
        if revalidated is not None and code in revalidated["objects"]:
            entry["adapted_success"] = revalidated["objects"][code]["success_rate"]
        out[code] = entry
    return {"objects": out}
