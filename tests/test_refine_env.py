"""The refinement environment: corrections, shapes, determinism, NaN containment.

The hold test runs on MuJoCo's C engine (`backends.MuJoCo.world_hold_fn`) on the bottle of
the shared sample at its smallest scale, with a 5-piece budget and a short
strict protocol, so the module compiles a few small functions.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _paths import SHARED_DATA, requires_shared_data
from diffrl_jax.data import grasps as grasp_lib
from diffrl_jax.data import rotations
from diffrl_jax.errors import ConfigError
from diffrl_jax.hand import constants
from diffrl_jax.rl import refine, refine_env
from diffrl_jax.rl.refine_env import ACTION_SIZE, RefineConfig, correct
from diffrl_jax.sim import bank, protocol

B = 4


def _random_grasps(n, seed=0):
    rng = np.random.default_rng(seed)
    rot = rotations.rotvec_to_matrix(rng.normal(size=(n, 3)))
    low, high = constants.JOINT_RANGES[:, 0], constants.JOINT_RANGES[:, 1]
    joints = rng.uniform(low, high, size=(n, constants.NUM_JOINTS))
    return grasp_lib.make_grasps(rng.normal(size=(n, 3)) * 0.1, rot, joints).astype(np.float32)


def test_zero_action_keeps_the_grasp():
    g = _random_grasps(8)
    out = np.asarray(correct(jnp.asarray(g), jnp.zeros((8, ACTION_SIZE)), RefineConfig()))
    np.testing.assert_allclose(out, g, atol=1e-6)


def test_corrections_respect_their_bounds():
    cfg = RefineConfig()
    g = _random_grasps(64, seed=1)
    a = np.random.default_rng(2).uniform(-3, 3, size=(64, ACTION_SIZE)).astype(np.float32)
    out = np.asarray(correct(jnp.asarray(g), jnp.asarray(a), cfg), np.float64)
    t0, r0, q0 = grasp_lib.split_grasps(g.astype(np.float64))
    t1, r1, q1 = grasp_lib.split_grasps(out)
    assert np.all(np.abs(t1 - t0) <= cfg.translation_m + 1e-6)
    angle = rotations.rotation_angle(r0, r1)
    assert np.all(angle <= cfg.rotation_rad * np.sqrt(3) + 1e-5)
    assert np.all(np.abs(q1 - q0) <= cfg.joints_rad + cfg.closure_rad + 1e-5)
    low, high = constants.JOINT_RANGES[:, 0], constants.JOINT_RANGES[:, 1]
    assert np.all((q1 >= low - 1e-6) & (q1 <= high + 1e-6))


def test_translation_action_moves_the_palm_in_the_object_frame():
    g = _random_grasps(1)
    a = np.zeros((1, ACTION_SIZE), np.float32)
    a[0, 2] = 0.5
    out = np.asarray(correct(jnp.asarray(g), jnp.asarray(a), RefineConfig()))
    np.testing.assert_allclose(out[0, :3] - g[0, :3], [0, 0, 0.01], atol=1e-6)
    np.testing.assert_allclose(out[0, 3:], g[0, 3:], atol=1e-6)


def test_closure_closes_the_fingers():
    g = _random_grasps(1)
    g[0, grasp_lib.JOINTS] = np.clip(0.0, constants.JOINT_RANGES[:, 0], constants.JOINT_RANGES[:, 1])
    a = np.zeros((1, ACTION_SIZE), np.float32)
    a[0, refine_env.CLOSURE_ACTION] = 1.0
    dq = np.asarray(correct(jnp.asarray(g), jnp.asarray(a), RefineConfig()))[0, grasp_lib.JOINTS] \
        - g[0, grasp_lib.JOINTS]
    assert np.all(dq * refine_env.CLOSURE >= -1e-6)  # never against the closing direction
    assert np.abs(dq).max() > 0.2


def test_joints_outside_their_limits_are_not_pushed_further():
    g = _random_grasps(1)
    high = constants.JOINT_RANGES[:, 1]
    g[0, grasp_lib.JOINTS] = high + 0.05
    a = np.ones((1, ACTION_SIZE), np.float32)
    out = np.asarray(correct(jnp.asarray(g), jnp.asarray(a), RefineConfig()))
    assert np.all(out[0, grasp_lib.JOINTS] <= high + 0.05 + 1e-6)


def test_non_finite_actions_count_as_zero():
    g = _random_grasps(2)
    a = np.full((2, ACTION_SIZE), np.nan, np.float32)
    out = np.asarray(correct(jnp.asarray(g), jnp.asarray(a), RefineConfig()))
    np.testing.assert_allclose(out, g, atol=1e-6)


def test_next_base_is_the_settled_grasp_where_finite():
    from diffrl_jax.rl.refine_env import next_base

    g = _random_grasps(3)
    settled = g + 0.01
    settled[1, 5] = np.nan  # a settle that diverged: correct from the tested grasp
    out = np.asarray(next_base(jnp.asarray(g), settled))
    np.testing.assert_allclose(out[[0, 2]], settled[[0, 2]], atol=1e-6)
    np.testing.assert_allclose(out[1], g[1], atol=1e-6)


def test_config_errors():
    with pytest.raises(ConfigError, match="steps"):
        RefineConfig(steps=0).validate()
    with pytest.raises(ConfigError, match="translation_m"):
        RefineConfig().replace(translation_m=-1.0)
    with pytest.raises(ConfigError, match="unknown"):
        RefineConfig().replace(squeeze=1.0)
    with pytest.raises(ConfigError, match="from_settled"):
        RefineConfig().replace(from_settled="yes")


def test_exploration_noise():
    """Adaptation attempts: the policy's action plus N(0, explore^2) per component, clipped."""
    mean = jnp.full(ACTION_SIZE, 0.1)
    policy = lambda obs, key: mean  # noqa: E731  (a policy with no spread of its own)
    assert refine.add_exploration(policy, 0.0) is policy
    explore = jax.jit(refine.add_exploration(policy, 0.3))
    keys = jax.random.split(jax.random.key(0), 4000)
    actions = np.asarray(jax.vmap(lambda k: explore(None, k))(keys))
    assert actions.shape == (4000, ACTION_SIZE) and np.all(np.abs(actions) <= 1.0)
    np.testing.assert_allclose(actions.mean(), 0.1, atol=0.01)
    np.testing.assert_allclose(actions.std(), 0.3, atol=0.01)
    np.testing.assert_array_equal(explore(None, keys[0]), explore(None, keys[0]))  # a key fixes it
    wide = np.asarray(jax.vmap(lambda k: refine.add_exploration(policy, 5.0)(None, k))(keys))
    assert np.all(np.abs(wide) <= 1.0) and np.mean(np.abs(wide) == 1.0) > 0.7  # clipped
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="explore"):
            refine.add_exploration(policy, bad)


def test_exploration_schedule():
    assert refine.exploration_schedule(0.1, 3) == (0.1, 0.1, 0.1)
    assert refine.exploration_schedule((0.2, 0.0), 3) == (0.2, 0.0, 0.0)  # the last repeats
    assert refine.exploration_schedule([0.3], 1) == (0.3,)
    with pytest.raises(ConfigError, match="2 values for episodes of 1 step"):
        refine.exploration_schedule((0.2, 0.0), 1)
    for bad in ((), (0.1, -0.1), (float("nan"),), float("inf")):
        with pytest.raises(ConfigError, match="explore"):
            refine.exploration_schedule(bad, 3)


class _RecordingEnv:
    """A stand-in for `RefineEnv` in `make_attempts`: the tested grasp is the action
    itself, and only step `holds_at` of an episode holds, so the attempts' grasps are the
    actions of that step."""

    def __init__(self, steps, holds_at):
        self.config = RefineConfig(steps=steps)
        self.holds_at = holds_at

    def start(self, index):
        from brax.envs.base import State

        zero = jnp.zeros(())
        return State(pipeline_state=None, obs=jnp.zeros(4), reward=zero, done=zero, metrics={},
                     info={"grasp": jnp.zeros(31), "t": jnp.zeros((), jnp.int32), "success": jnp.zeros((), bool)})

    def step(self, state, action):
        t = state.info["t"]
        grasp = jnp.zeros(31).at[:ACTION_SIZE].set(action)
        info = {"grasp": grasp, "t": t + 1, "success": t == self.holds_at}
        done = (t + 1 >= self.config.steps).astype(jnp.float32)
        return state.replace(reward=jnp.zeros(()), done=done, info=info)


@pytest.mark.parametrize("holds_at, expected_std", [(0, 0.2), (1, 0.0), (2, 0.0)])
def test_attempts_explore_each_step_with_its_own_std(holds_at, expected_std):
    """`make_attempts(explore=(0.2, 0))`: noise of std 0.2 on the first correction only;
    the first attempt is the deterministic policy's, noise-free."""
    zero = lambda obs, key: jnp.zeros(ACTION_SIZE)  # noqa: E731  (policies with no spread)
    env = _RecordingEnv(steps=3, holds_at=holds_at)
    run = refine.make_attempts(env, zero, zero, attempts=65, explore=(0.2, 0.0))
    grasps, success, _ = run(jnp.arange(4), jax.random.key(0))
    assert grasps.shape == (4, 65, 31) and bool(success.all())
    actions = np.asarray(grasps)[..., :ACTION_SIZE]
    assert not actions[:, 0].any()  # the policy's mean, unexplored
    np.testing.assert_allclose(actions[:, 1:].std(), expected_std, atol=0.01)
    again = run(jnp.arange(4), jax.random.key(0))[0]
    np.testing.assert_array_equal(np.asarray(again), np.asarray(grasps))  # a key fixes the attempts


def test_heldout_split_is_per_object_and_seeded():
    index = np.repeat(np.arange(3), [10, 5, 1])
    a = refine.split_heldout(index, 0.2, seed=0)
    assert [int(a[index == k].sum()) for k in range(3)] == [2, 1, 0]
    np.testing.assert_array_equal(a, refine.split_heldout(index, 0.2, seed=0))
    assert not np.array_equal(a, refine.split_heldout(index, 0.2, seed=1))
    with pytest.raises(ConfigError):
        refine.split_heldout(index, 1.0, seed=0)


@pytest.fixture(scope="module")
def problem():
    from diffrl_jax.data.dexgraspnet import load_dexgraspnet

    ds = load_dexgraspnet(SHARED_DATA, objects=["sem-Bottle-437678d4bc6be981c8724d5673a063a6"])
    rows = np.flatnonzero(ds.scales == ds.scales.min())[:8]
    ds = ds.take(rows)
    hold = protocol.protocol("strict", settle_s=0.05, hold_s=0.25)
    return refine.build_problem(ds, hold, bank.ObjectBudget(pieces=5), heldout_fraction=0.25)


@pytest.fixture(scope="module")
def env(problem):
    return refine.make_env(problem, RefineConfig(), "mujoco", nthread=2)


@pytest.fixture(scope="module")
def jitted(env):
    return jax.jit(jax.vmap(env.reset)), jax.jit(jax.vmap(env.step))


@requires_shared_data
def test_env_shapes_and_finite(env, jitted):
    reset, step = jitted
    state = reset(jax.random.split(jax.random.key(0), B))
    assert state.obs.shape == (B, env.observation_size)
    assert env.action_size == ACTION_SIZE
    assert bool(jnp.isfinite(state.obs).all())
    action = jax.random.uniform(jax.random.key(1), (B, ACTION_SIZE), minval=-1, maxval=1)
    nxt = step(state, action)
    assert nxt.obs.shape == state.obs.shape and nxt.reward.shape == (B,)
    assert bool(jnp.isfinite(nxt.obs).all()) and bool(jnp.isfinite(nxt.reward).all())
    assert bool((nxt.done == 1).all())  # one correction per episode by default
    expected = sum(nxt.metrics[f"reward/{k}"] for k in
                   ("success", "held", "displacement", "penetration", "action"))
    np.testing.assert_allclose(nxt.reward, expected, rtol=1e-6)
    np.testing.assert_array_equal(nxt.metrics["success"] > 0, nxt.info["success"])


@requires_shared_data
def test_env_is_deterministic(jitted):
    reset, step = jitted
    keys = jax.random.split(jax.random.key(3), B)
    action = jax.random.uniform(jax.random.key(4), (B, ACTION_SIZE), minval=-1, maxval=1)
    a = step(reset(keys), action)
    b = step(reset(keys), action)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@requires_shared_data
def test_env_step_matches_the_hold_test(problem, env, jitted):
    """A zero action's reward comes from the same hold test `diffrl validate` runs."""
    from diffrl_jax.sim import mujoco_backend

    reset, step = jitted
    state = reset(jax.random.split(jax.random.key(5), B))
    nxt = step(state, jnp.zeros((B, ACTION_SIZE)))
    rows = np.flatnonzero(~problem.heldout)[np.asarray(state.info["index"])]
    direct = mujoco_backend.hold_test_mujoco(
        problem.template, problem.prepared[0], problem.dataset.grasps[rows], nthread=2)
    np.testing.assert_array_equal(np.asarray(nxt.info["success"]), direct.success)
    np.testing.assert_array_equal(np.asarray(nxt.info["held"]), direct.held)
    # The tested grasp is the dataset's; the next correction starts where its settle left it.
    np.testing.assert_allclose(np.asarray(nxt.info["grasp"]), problem.dataset.grasps[rows], atol=1e-6)
    np.testing.assert_allclose(np.asarray(nxt.info["base"]), direct.settled, atol=1e-4)
    assert not np.allclose(np.asarray(nxt.info["base"]), np.asarray(nxt.info["grasp"]), atol=1e-3)


@requires_shared_data
def test_nan_action_is_contained(jitted):
    reset, step = jitted
    state = reset(jax.random.split(jax.random.key(6), B))
    action = jnp.zeros((B, ACTION_SIZE)).at[0].set(jnp.nan)
    nxt = step(state, action)
    assert bool(jnp.isfinite(nxt.reward).all()) and bool(jnp.isfinite(nxt.obs).all())


def test_adapt_rounds_search_again_only_where_nothing_held(monkeypatch):
    """`adapt(rounds=R)`: raw failures that no attempt fixed get more rounds of fresh keys,
    a row leaves the search once one of its attempts holds, and round 1 is the plain adapt."""
    import types

    n, k_attempts, chunk, salt = 10, 2, 4, refine._ROUND_SALT
    needed = np.array([99, 99, 0, 0, 1, 1, 2, 2, 3, 9])  # first round in which a row's attempts hold
    raw = np.arange(n) < 2  # rows 0 and 1 hold as they are
    key = jax.random.PRNGKey(5)
    round_of = {}  # the round each key adapt may pass belongs to
    for k in range(n):  # more chunk indices than any round uses
        round_of[tuple(np.asarray(jax.random.fold_in(key, k)).tolist())] = 0
        for r in range(1, 4):
            rk = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, salt), r), k)
            round_of[tuple(np.asarray(rk).tolist())] = r
    calls = []

    def attempts_fn(rows, key_):
        r = round_of[tuple(np.asarray(key_).tolist())]
        rows = np.asarray(rows)
        calls.append((r, sorted(set(rows.tolist()))))
        ok = np.repeat((needed[rows] <= r)[:, None], k_attempts, axis=1)
        grasps = np.zeros((len(rows), k_attempts, 31)) + (100.0 * r + rows)[:, None, None]
        return grasps, ok, ok.astype(np.float32)

    monkeypatch.setattr(refine, "make_raw_test",
                        lambda env: lambda rows: (raw[np.asarray(rows)], np.zeros(len(rows), np.float32), None))
    class _Dataset:
        grasps = -np.ones((n, 31))

        def __len__(self):
            return n

    problem = types.SimpleNamespace(dataset=_Dataset())
    seen = []
    out = refine.adapt(problem, None, attempts_fn, key, chunk=chunk, rounds=3,
                       on_round=lambda r, rows: seen.append((r, rows)))
    assert seen == [(1, 6), (2, 4)]  # rows 4-9 are left after round 0, rows 6-9 after round 1
    assert all(set(rows) <= set(range(4, 10)) for r, rows in calls if r == 1)
    assert all(set(rows) <= set(range(6, 10)) for r, rows in calls if r == 2)
    fixed = np.arange(n)[2:8]
    np.testing.assert_array_equal(np.flatnonzero(out.refined), fixed)
    np.testing.assert_array_equal(out.keep, raw | out.refined)
    np.testing.assert_array_equal(out.grasps[fixed, 0], 100.0 * needed[fixed] + fixed)  # from the round that held
    np.testing.assert_array_equal(out.grasps[~out.refined], -1.0)  # originals kept or dropped as they were
    np.testing.assert_array_equal(out.attempts, k_attempts * np.array([1, 1, 1, 1, 2, 2, 3, 3, 3, 3]))
    once = refine.adapt(problem, None, attempts_fn, key, chunk=chunk)  # rounds=1: no second look
    np.testing.assert_array_equal(np.flatnonzero(once.refined), [2, 3])
    assert (once.attempts == k_attempts).all()
    with pytest.raises(ConfigError, match="rounds"):
        refine.adapt(problem, None, attempts_fn, key, rounds=0)
