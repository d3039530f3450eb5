"""The lift protocol: config, frames, table clearance, settling, lifting, NaN containment.

One compiled lift program serves the module: objects standing upright (the
built-in can and food box, budget of two pieces), 2 objects x 2 poses, with
a coarser timestep than the default (0.008 s: 400 steps per lift) to keep
the suite quick. The grasps are proposals (`propose.propose_grasps`, seed 0:
cylinder row 21, box row 324, rounded to 1e-4) that lifted their object at
every one of 8 random places and yaws with this protocol (MuJoCo C).
"""

import functools

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import pytest

from diffrl_jax.data import grasps as grasp_lib
from diffrl_jax.data import rotations
from diffrl_jax.errors import ConfigError
from diffrl_jax.objects import assets
from diffrl_jax.sim import bank, lift

PROTOCOL = lift.LiftProtocol().replace(orientation="upright", timestep=0.008, settle_s=0.5)
CYLINDER_GRASP = np.array([
    0.0946, 0.0399, 0.0126, 0.3308, -0.8631, 0.3817, 0.5738, 0.505, 0.6447, 0.0374, 0.6739, 0.6713,
    0.707, -0.0122, 0.6729, 0.6754, 0.7159, -0.0219, 0.7629, 0.7665, 0.7127, 0.2429, -0.0149, 0.703,
    0.7116, 0.7141, 0.1941, 0.8608, -0.072, -0.0972, -0.6001])
BOX_GRASP = np.array([
    -0.0336, -0.0691, -0.0133, -0.8639, 0.4947, 0.0948, -0.4747, -0.8625, 0.1755, -0.0, 0.9015, 1.0456,
    0.7508, -0.0, 0.9015, 1.0455, 0.7508, -0.0003, 0.8714, 1.0135, 0.7392, 0.2766, -0.0036, 0.8731,
    0.9742, 0.7323, 0.2338, 0.8599, -0.0687, -0.4579, -0.7405])
EMPTY_OFFSET = np.array([0.25, 0.0, 0.0])  # the box's hand, moved 25 cm sideways: grasps air


@pytest.fixture(scope="module")
def setup():
    template = lift.make_template(PROTOCOL, bank.ObjectBudget(pieces=2))
    prepared = [lift.prepare_object(template, assets.builtin_object(n)) for n in ("cylinder", "box")]
    fields = bank.stack_fields([template.fields(p) for p in prepared])
    settle = lift.make_settle(template, 2)
    poses = np.asarray(jax.device_get(settle(fields, jax.random.split(jax.random.key(0), 2))))
    object_grasps = np.stack([np.stack([CYLINDER_GRASP] * 2), np.stack([BOX_GRASP] * 2)])
    grasps = np.asarray(lift.grasp_to_world(object_grasps, poses.astype(np.float64)))
    grasps[1, 1, :3] += EMPTY_OFFSET
    poses, grasps = poses.astype(np.float32), grasps.astype(np.float32)
    fn = lift.make_lift_test(template)
    result = jax.device_get(fn(fields, poses, grasps))
    return dict(template=template, prepared=prepared, fields=fields, poses=poses, grasps=grasps,
                fn=fn, result=result)


def test_protocol_defaults():
    p = lift.LiftProtocol().validate()
    assert (p.lift_height_m, p.success_height_m, p.slip_bound_m, p.hold_s) == (0.20, 0.15, 0.03, 1.0)
    assert p.total_steps == sum(p.phase_steps) == 800
    assert p.lift_start == sum(p.phase_steps[:3])
    assert p.replace(friction=0.5).physics.friction == 0.5


@pytest.mark.parametrize("overrides, match", [
    ({"friction": -1.0}, "friction must be positive"),
    ({"timestep": float("nan")}, "timestep must be positive"),
    ({"timestep": 0.05}, "too coarse"),
    ({"hold_s": -1.0}, "hold_s"),
    ({"open_fraction": 1.5}, "open_fraction"),
    ({"orientation": "sideways"}, "orientation"),
    ({"region_half_extent_m": 0.5}, "does not fit on the table"),
    ({"table_size": (0.4, 0.4)}, "table_size"),
    ({"success_height_m": 0.3}, "exceeds the lift height"),
    ({"lift_s": 0.001}, "shorter than one timestep"),
    ({"max_contacts": 0}, "max_contacts"),
    ({"lift_hieght_m": 0.2}, "unknown lift protocol field"),
])
def test_bad_protocols(overrides, match):
    with pytest.raises(ConfigError, match=match):
        lift.LiftProtocol().replace(**overrides)


def test_grasp_to_world_round_trip_and_frame():
    """World grasps put the palm where the object-frame grasp says, in MuJoCo's own kinematics."""
    rng = np.random.default_rng(0)
    grasps = np.concatenate([rng.normal(size=(5, 9)) * 0.1, np.tile(CYLINDER_GRASP[9:], (5, 1))], -1)
    grasps = grasp_lib.make_grasps(*grasp_lib.split_grasps(grasps))  # orthonormal rot6d
    quat = rng.normal(size=(5, 4))
    quat /= np.linalg.norm(quat, axis=-1, keepdims=True)
    poses = np.concatenate([rng.normal(size=(5, 3)) * 0.1, quat], -1)
    world = lift.grasp_to_world(grasps, poses)
    np.testing.assert_allclose(lift.grasp_to_object(world, poses), grasps, atol=1e-12)
    jax_world = lift.grasp_to_world(jnp.asarray(grasps, jnp.float32), jnp.asarray(poses, jnp.float32))
    np.testing.assert_allclose(np.asarray(jax_world), world, atol=1e-5)

    template = lift.make_template(PROTOCOL, bank.ObjectBudget(pieces=2))  # no JAX compile
    scene, model = template.scene, template.scene.model
    data = mujoco.MjData(model)
    for grasp, w, pose in zip(grasps, world, poses):
        data.qpos[scene.hand_qpos] = np.concatenate([grasp_lib.wrist_qpos(w), w[grasp_lib.JOINTS]])
        data.qpos[scene.object_qpos:scene.object_qpos + 7] = pose
        mujoco.mj_kinematics(model, data)
        r_obj = data.xmat[scene.object_body].reshape(3, 3)
        palm_in_object = r_obj.T @ (data.xpos[template.palm_body] - data.xpos[scene.object_body])
        rot_in_object = r_obj.T @ data.xmat[template.palm_body].reshape(3, 3)
        np.testing.assert_allclose(palm_in_object, grasp[:3], atol=1e-9)
        np.testing.assert_allclose(rot_in_object, rotations.rot6d_to_matrix(grasp[3:9]), atol=1e-9)


def test_pregrasp_backs_off_away_from_the_object(setup):
    """The pre-grasp palm is `back_off_m` further out along its back, away from the object."""
    poses, grasps = setup["poses"].astype(np.float64), setup["grasps"].astype(np.float64)
    pre = lift.pregrasp(PROTOCOL, grasps)
    _, rot, _ = grasp_lib.split_grasps(grasps)
    back = PROTOCOL.back_off_m * rot[..., :, 1]
    np.testing.assert_allclose(pre[..., :3] - grasps[..., :3], back, atol=1e-12)
    np.testing.assert_allclose(grasp_lib.split_grasps(pre)[1], rot, atol=1e-12)
    # The palm's inner face (local -y) faces the object: backing off moves it away.
    before = np.linalg.norm(grasps[..., :3] - poses[..., :3], axis=-1)
    after = np.linalg.norm(pre[..., :3] - poses[..., :3], axis=-1)
    good = [(0, 0), (0, 1), (1, 0)]
    for i in good:
        assert after[i] > before[i] + 0.5 * PROTOCOL.back_off_m
    opened = pre[..., grasp_lib.JOINTS]
    np.testing.assert_allclose(opened, np.broadcast_to(lift.OPEN_POSE, opened.shape), atol=1e-12)


def test_settled_poses_rest_upright_in_the_region(setup):
    poses = setup["poses"]
    assert poses.shape == (2, 2, 7)
    np.testing.assert_allclose(np.linalg.norm(poses[..., 3:], axis=-1), 1.0, atol=1e-5)
    up = rotations.quat_to_matrix(poses[..., 3:])[..., 2, 2]  # object z . world z
    assert np.all(up > 0.999), up
    # Standing on its end: the centre at the half height (both are 12 cm tall).
    np.testing.assert_allclose(poses[..., 2], 0.06, atol=2e-3)
    assert np.all(np.abs(poses[..., :2]) <= PROTOCOL.region_half_extent_m + 0.01)
    assert not np.allclose(poses[:, 0], poses[:, 1])  # different drops


def test_table_clearance(setup):
    template = setup["template"]
    clearance = jax.jit(functools.partial(lift.table_clearance, template))
    grasps = setup["grasps"]
    c = np.asarray(clearance(jnp.asarray(grasps)))
    assert c.shape == (2, 2)
    assert np.all(c > PROTOCOL.table_margin_m), c  # the module's grasps are all above the table
    under = grasps.copy()
    under[..., 2] -= 0.1
    c_under = np.asarray(clearance(jnp.asarray(under)))
    assert np.all(c_under < 0), c_under  # through the table
    clears = jax.jit(functools.partial(lift.clears_table, template))
    kept = np.asarray(clears(jnp.asarray(np.stack([grasps, under]))))
    np.testing.assert_array_equal(kept, np.stack([np.ones((2, 2), bool), np.zeros((2, 2), bool)]))
    np.testing.assert_allclose(c_under, c - 0.1, atol=1e-5)  # a rigid shift moves the lowest point

    # The lowest point against MuJoCo's exact hand-table distances (hand above the table top).
    lowest = jax.jit(jax.vmap(functools.partial(lift.hand_lowest_point, template)))
    scene, model = template.scene, template.scene.model
    hand = np.concatenate([grasp_lib.wrist_qpos(grasps.reshape(-1, 31).astype(np.float64)),
                           grasps.reshape(-1, 31)[:, grasp_lib.JOINTS]], -1)
    z = np.asarray(lowest(jnp.asarray(hand, jnp.float32)))
    data = mujoco.MjData(model)
    fromto = np.zeros(6)
    for q, zi in zip(hand, z):
        data.qpos[scene.hand_qpos] = q
        mujoco.mj_kinematics(model, data)
        dist = min(mujoco.mj_geomDistance(model, data, int(g), scene.table_geom, 1.0, fromto)
                   for g in scene.hand_geoms)
        np.testing.assert_allclose(zi - lift.TABLE_TOP, dist, atol=1e-4)


def test_clearance_matrix_is_every_grasp_in_every_pose(setup):
    from diffrl_jax.evaluation import pose_sampling

    template, poses = setup["template"], setup["poses"][0]  # the cylinder's two resting poses
    below = CYLINDER_GRASP.copy()
    below[2] -= 1.0
    object_grasps = np.stack([CYLINDER_GRASP, BOX_GRASP, below]).astype(np.float32)
    matrix = np.asarray(jax.jit(functools.partial(pose_sampling.clearance_matrix, template))(object_grasps, poses))
    assert matrix.shape == (2, 3)
    clearance = jax.jit(functools.partial(lift.table_clearance, template))
    for p in range(2):
        world = lift.grasp_to_world(object_grasps, np.broadcast_to(poses[p], (3, 7)))
        np.testing.assert_allclose(matrix[p], np.asarray(clearance(world)), atol=1e-6)
    np.testing.assert_allclose(matrix[:, 0], np.asarray(clearance(setup["grasps"][0])), atol=1e-5)
    assert np.all(matrix[:, 0] > 0)  # the module's lifting grasp, as executed
    assert np.all(matrix[:, 2] < 0)  # the cylinder stands upright: 1 m below it is under the table


def test_good_grasps_lift(setup):
    r = setup["result"]
    assert r.success.shape == (2, 2) and r.success.dtype == bool
    assert np.all(r.finite)
    for i in [(0, 0), (0, 1), (1, 0)]:
        assert r.success[i], jax.tree_util.tree_map(lambda a: a[i], r)
        assert r.lift_height[i] >= PROTOCOL.success_height_m
        assert r.slip[i] < PROTOCOL.slip_bound_m
        assert r.contact[i]
    np.testing.assert_allclose(r.hand_height, PROTOCOL.lift_height_m, atol=0.01)  # the wrist servo follows


def test_empty_hand_fails(setup):
    r = setup["result"]
    assert not r.success[1, 1]
    assert abs(r.lift_height[1, 1]) < 0.01 and not r.contact[1, 1]
    assert r.slip[1, 1] > PROTOCOL.lift_height_m - 0.02  # the object stayed on the table


def test_nan_grasp_is_contained(setup):
    grasps = setup["grasps"].copy()
    grasps[0, 1, 15] = np.nan  # a NaN joint of the second cylinder world
    r = jax.device_get(setup["fn"](setup["fields"], setup["poses"], grasps))
    assert not r.success[0, 1] and not r.finite[0, 1]
    keep = np.ones((2, 2), bool)
    keep[0, 1] = False
    base = setup["result"]
    for a, b in zip(jax.tree_util.tree_leaves(r), jax.tree_util.tree_leaves(base)):
        np.testing.assert_array_equal(a[keep], b[keep])


def test_objects_are_data(setup):
    """Swapping the groups' objects swaps the results, through the same compiled program."""
    swap = lambda x: x[::-1].copy()  # noqa: E731
    fields = jax.tree_util.tree_map(swap, setup["fields"])
    r = jax.device_get(setup["fn"](fields, swap(setup["poses"]), swap(setup["grasps"])))
    for a, b in zip(jax.tree_util.tree_leaves(r), jax.tree_util.tree_leaves(setup["result"])):
        np.testing.assert_allclose(a[::-1], b, atol=1e-6)
    assert setup["fn"]._cache_size() == 1


def test_mujoco_backend_agrees(setup):
    from diffrl_jax.sim import lift_mujoco

    r = setup["result"]
    for k, prepared in enumerate(setup["prepared"]):
        c = lift_mujoco.lift_mujoco(setup["template"], prepared, setup["poses"][k], setup["grasps"][k])
        np.testing.assert_array_equal(c.success, r.success[k])
        np.testing.assert_allclose(c.lift_height, r.lift_height[k], atol=0.01)


def test_mujoco_settle_matches_mjx(setup):
    """The C backend's settling: the same drops as MJX's (same key), resting on the table."""
    from diffrl_jax.sim import lift_mujoco

    keys = jax.random.split(jax.random.key(0), 2)
    for k, prepared in enumerate(setup["prepared"]):
        rest = lift_mujoco.settle_mujoco(setup["template"], prepared, keys[k], 2)
        assert rest.shape == (2, 7) and np.all(np.isfinite(rest))
        np.testing.assert_allclose(np.linalg.norm(rest[:, 3:], axis=-1), 1.0, atol=1e-9)
        up = rotations.quat_to_matrix(rest[:, 3:])[:, 2, 2]
        assert np.all(up > 0.999), up
        np.testing.assert_allclose(rest[:, 2], 0.06, atol=2e-3)  # standing on the table, not in it
        # Dropped 1 cm onto a flat table: it lands where MJX's drop lands.
        np.testing.assert_allclose(rest[:, :2], setup["poses"][k][:, :2], atol=3e-3)
    with pytest.raises(ConfigError, match="at least 1"):
        lift_mujoco.settle_mujoco(setup["template"], setup["prepared"][0], keys[0], 0)
