"""One contract for both simulator backends (`sim.backends`): the same operations, the
same result types, and agreement on a small fixed batch.

The scene is test_lift's (upright built-in objects, budget of two pieces, a coarse
0.008 s timestep) and its lifting box grasp; pose sampling's hold check
(`pose_sampling._check`, the lift's physics padded to 4 rows) is tested here,
after the fixture compiled its program, so the compilation cache serves it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_lift import BOX_GRASP, EMPTY_OFFSET, PROTOCOL

from diffrl_jax.errors import ConfigError
from diffrl_jax.evaluation import pose_sampling
from diffrl_jax.objects import assets
from diffrl_jax.sim import backends, bank, lift
from diffrl_jax.sim.hold import HoldResult
from diffrl_jax.sim.lift import LiftResult

BACKENDS = {"mujoco": backends.MuJoCo(nthread=1), "mjx": backends.MJX()}


@pytest.fixture(scope="module")
def world():
    template = lift.make_template(PROTOCOL, bank.ObjectBudget(pieces=2))
    prepared = lift.prepare_object(template, assets.builtin_object("box"))
    hold_template = bank.make_template(pose_sampling.hold_protocol_for(PROTOCOL), template.budget)
    empty = BOX_GRASP.copy()
    empty[:3] += EMPTY_OFFSET
    grasps = np.stack([BOX_GRASP, empty]).astype(np.float32)
    return dict(template=template, hold_template=hold_template, prepared=prepared, grasps=grasps)


@pytest.fixture(scope="module")
def runs(world):
    """Every operation on both backends: {name: {operation: result}}."""
    key = jax.random.key(0)
    out = {}
    for name, backend in BACKENDS.items():
        hold = backend.hold(world["hold_template"], world["prepared"], world["grasps"], pad_to=4)
        poses = backend.settle(world["template"], world["prepared"], key, 2)
        world_grasps = np.asarray(lift.grasp_to_world(np.stack([BOX_GRASP] * 2), poses), np.float32)
        lifted = backend.lift(world["template"], world["prepared"], poses, world_grasps)
        out[name] = dict(hold=hold, poses=poses, lift=lifted)
    return out


def _layout(tree):
    return jax.tree_util.tree_map(lambda x: (np.shape(x), np.asarray(x).dtype.kind), tree)


def test_get_builds_backends_by_name_and_passes_objects_through():
    assert isinstance(backends.get("mjx"), backends.MJX)
    assert backends.get("mujoco", nthread=2).nthread == 2
    backend = backends.MuJoCo()
    assert backends.get(backend) is backend
    assert backends.get("mjx").shards_over_devices and not backends.get("mujoco").shards_over_devices
    with pytest.raises(ConfigError, match="unknown backend 'bullet'"):
        backends.get("bullet")
    with pytest.raises(ConfigError, match="nthread must be at least 1"):
        backends.get("mujoco", nthread=0)
    with pytest.raises(ConfigError, match="chunk field groups must be a positive integer"):
        backends.get("mjx", chunk=backends.ChunkConfig(groups=0))


def test_same_result_types(runs):
    c, m = runs["mujoco"], runs["mjx"]
    assert isinstance(c["hold"], HoldResult) and isinstance(m["hold"], HoldResult)
    assert isinstance(c["lift"], LiftResult) and isinstance(m["lift"], LiftResult)
    for op in ("hold", "poses", "lift"):
        shapes_c = jax.tree_util.tree_map(np.shape, c[op])
        shapes_m = jax.tree_util.tree_map(np.shape, m[op])
        assert shapes_c == shapes_m, op
        kinds = jax.tree_util.tree_map(lambda a, b: (np.asarray(a).dtype.kind == "b")
                                       == (np.asarray(b).dtype.kind == "b"), c[op], m[op])
        assert all(jax.tree_util.tree_leaves(kinds)), op
    assert c["hold"].held.shape == (2, 6) and c["lift"].success.shape == (2,)
    assert c["poses"].shape == (2, 7)


def test_pose_sampling_check_runs_on_both_backends(world, runs):
    """Pose sampling's check (`_check`: directions held under `hold_protocol_for`) of the
    lifting grasp and of an empty hand is the backends' hold count, on both."""
    for name, backend in BACKENDS.items():
        held = pose_sampling._check(world["template"], world["prepared"], world["grasps"],
                                    backend, size=4)
        assert held.shape == (2,)
        np.testing.assert_array_equal(held, runs[name]["hold"].held.sum(-1), err_msg=name)


def test_backends_agree_on_a_small_batch(runs):
    c, m = runs["mujoco"], runs["mjx"]
    # Hold check: the empty hand holds nowhere on both; the box grasp resists some of
    # the six pulls on both, by at most one direction apart (contacts differ in detail).
    held_c, held_m = c["hold"].held.sum(-1), m["hold"].held.sum(-1)
    assert held_c[1] == held_m[1] == 0
    assert held_c[0] >= 2 and abs(int(held_c[0]) - int(held_m[0])) <= 1, (held_c, held_m)
    # Settle: the same drops (same key) land at the same place, upright on the table.
    np.testing.assert_allclose(c["poses"][:, :3], m["poses"][:, :3], atol=3e-3)
    # Lift: the box grasp lifts its box on both, to the same height.
    np.testing.assert_array_equal(c["lift"].success, m["lift"].success)
    assert c["lift"].success.all()
    np.testing.assert_allclose(c["lift"].lift_height, m["lift"].lift_height, atol=0.01)


def test_hold_objects_is_hold_per_object(world):
    """The dataset path (several objects, each with its grasps) gives each object's `hold`."""
    backend = BACKENDS["mujoco"]
    prepared = [world["prepared"], world["prepared"]]
    grasps = [world["grasps"], world["grasps"][:1]]
    seen = []
    results, _, _ = backend.hold_objects(world["hold_template"], prepared.__getitem__, grasps, seen.append)
    assert seen == [2, 1]
    single = backend.hold(world["hold_template"], world["prepared"], world["grasps"])
    for result, n in zip(results, (2, 1)):
        for a, b in zip(jax.tree_util.tree_leaves(result), jax.tree_util.tree_leaves(single)):
            np.testing.assert_array_equal(a, np.asarray(b)[:n])


@pytest.mark.parametrize("name", ["mujoco", "mjx"])
def test_world_hold_fn_traces_under_jit_and_vmap(world, name):
    """The refinement environment's hold test: one world, inside jit(vmap(...)), the
    same result layout on both (traced, not run: the C one runs in test_refine_env)."""
    fields = jax.tree_util.tree_map(jnp.asarray, bank.stack_fields([world["hold_template"].fields(world["prepared"])]))
    fn = BACKENDS[name].world_hold_fn(world["hold_template"], fields, [world["prepared"]])
    out = jax.eval_shape(jax.jit(jax.vmap(fn)), jnp.zeros(3, jnp.int32), jnp.zeros((3, 31), jnp.float32))
    assert isinstance(out, HoldResult)
    assert out.success.shape == (3,) and out.held.shape == (3, 6) and out.settled.shape == (3, 31)


@pytest.mark.parametrize("name", ["mujoco", "mjx"])
def test_world_lift_fn_traces_under_jit_and_vmap(world, name):
    fields = jax.tree_util.tree_map(jnp.asarray, bank.stack_fields([world["template"].fields(world["prepared"])]))
    fn = BACKENDS[name].world_lift_fn(world["template"], fields, [world["prepared"]])
    out = jax.eval_shape(jax.jit(jax.vmap(fn)), jnp.zeros(3, jnp.int32), jnp.zeros((3, 7), jnp.float32),
                         jnp.zeros((3, 31), jnp.float32))
    assert isinstance(out, LiftResult)
    assert all(leaf.shape == (3,) for leaf in jax.tree_util.tree_leaves(out))


def test_world_lift_fn_in_jit_is_the_batch_lift(world, runs):
    """On MuJoCo C: the lifts run from inside jit(vmap(...)) are the ones `lift` runs."""
    backend = BACKENDS["mujoco"]
    fields = jax.tree_util.tree_map(jnp.asarray, bank.stack_fields([world["template"].fields(world["prepared"])]))
    fn = jax.jit(jax.vmap(backend.world_lift_fn(world["template"], fields, [world["prepared"]])))
    poses = runs["mujoco"]["poses"].astype(np.float32)
    world_grasps = np.asarray(lift.grasp_to_world(np.stack([BOX_GRASP] * 2), poses), np.float32)
    out = jax.device_get(fn(jnp.zeros(2, jnp.int32), poses, world_grasps))
    np.testing.assert_array_equal(out.success, runs["mujoco"]["lift"].success)
    np.testing.assert_allclose(out.lift_height, runs["mujoco"]["lift"].lift_height, atol=2e-3)
