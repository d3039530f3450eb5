"""The lift refinement environment: edits, shapes, determinism, NaN containment, known lifts.

Everything that runs uses MuJoCo's C engine on one thread and test_lift's
coarse upright protocol on the built-in box and cylinder (budget of two
pieces), two settled resting poses each. One compiled program, `start` then
`step` vmapped, serves every test that simulates: each `mjx.kinematics` in a
program costs ~10 s of compile on a 2-core CPU, so the module compiles it
few times. The MJX backend is only traced (`jax.eval_shape`).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_lift import BOX_GRASP, CYLINDER_GRASP, PROTOCOL

from diffrl_jax.data import grasps as grasp_lib
from diffrl_jax.data import rotations
from diffrl_jax.errors import ConfigError
from diffrl_jax.objects import assets, encoding
from diffrl_jax.rl import lift_env, refine_env
from diffrl_jax.rl.lift_env import LiftData, LiftRefineConfig, LiftRefineEnv
from diffrl_jax.sim import backends, bank, hold, lift, resting

DOWN_M = 0.05  # the box grasp pushed this far along -up: through the table


@pytest.fixture(scope="module")
def setup():
    backend = backends.MuJoCo(nthread=1)
    template = lift.make_template(PROTOCOL, bank.ObjectBudget(pieces=2))
    objects = [assets.builtin_object(n) for n in ("box", "cylinder")]
    prepared = [lift.prepare_object(template, o) for o in objects]
    fields = bank.stack_fields([template.fields(p) for p in prepared])
    banks = [resting.resting_bank(backend, template, p, 2, seed=k) for k, p in enumerate(prepared)]
    down = BOX_GRASP.copy()
    down[:3] -= DOWN_M * banks[0].up[0]
    data = LiftData(
        grasps=jnp.asarray(np.stack([BOX_GRASP, down, CYLINDER_GRASP]), jnp.float32),
        object_id=jnp.asarray([0, 0, 1], jnp.int32),
        encodings=jnp.asarray(np.stack([encoding.encode_object(o) for o in objects])),
        fields=jax.tree_util.tree_map(jnp.asarray, fields),
        poses=jnp.asarray(np.stack([b.poses for b in banks]), jnp.float32),
        up=jnp.asarray(np.stack([b.up for b in banks]), jnp.float32))
    env = LiftRefineEnv(template, data, backend.world_lift_fn(template, data.fields, prepared))
    return {"backend": backend, "template": template, "prepared": prepared, "data": data, "env": env}


@pytest.fixture(scope="module")
def program(setup):
    env = setup["env"]

    def episode(index, pose_index, yaw, offset, action):
        state = env.start(index, pose_index, yaw, offset)
        return state, env.step(state, action)

    # XLA's backend optimisation off: the JAX part is kinematics and bookkeeping (the
    # physics runs in MuJoCo C), and compiling it takes ~26 s instead of ~40 s.
    return jax.jit(jax.vmap(episode), compiler_options={"xla_backend_optimization_level": 0})


# Rows of the module's one batch: the box grasp upright (no yaw, no offset), the same grasp
# 5 cm down, the cylinder turned and moved, the first row with a NaN action, and two rows
# drawn as `reset` draws them.
FIXED = 4
DRAWN = 2


@pytest.fixture(scope="module")
def batch(setup, program):
    env = setup["env"]
    drawn = jax.jit(jax.vmap(env.draw))(jax.random.split(jax.random.key(7), DRAWN))
    index = jnp.concatenate([jnp.asarray([0, 1, 2, 0], jnp.int32), drawn[0]])
    pose_index = jnp.concatenate([jnp.asarray([0, 0, 1, 0], jnp.int32), drawn[1]])
    yaw = jnp.concatenate([jnp.asarray([0.0, 0.0, 0.7, 0.0]), drawn[2]])
    offset = jnp.concatenate([jnp.asarray([[0, 0], [0, 0], [0.03, -0.02], [0, 0]], jnp.float32), drawn[3]])
    action = jnp.zeros((FIXED + DRAWN, env.action_size)).at[3].set(jnp.nan)
    action = action.at[FIXED:].set(jax.random.uniform(jax.random.key(8), (DRAWN, env.action_size),
                                                      minval=-1, maxval=1))
    args = (index, pose_index, yaw, offset, action)
    start, nxt = jax.device_get(program(*args))
    return {"args": args, "start": start, "next": nxt}


# --- config and the pure pieces (no physics) ---------------------------------------------------


def test_config_defaults_and_json():
    c = LiftRefineConfig().validate()
    assert (c.translation_m, c.rotation_rad, c.joints_rad, c.finger_mode) == (0.03, 0.3, 0.3, "joints")
    assert c.randomize_yaw and c.table_jitter_m == 0.05 and c.success_reward == 1.0
    assert c.action_size == refine_env.ACTION_SIZE == 29
    assert c.replace(finger_mode="synergy").action_size == lift_env.SYNERGY_ACTION_SIZE == 7
    assert c.to_json()["finger_mode"] == "joints" and c.replace(slip_cost=0.0).slip_cost == 0.0


@pytest.mark.parametrize("overrides, match", [
    ({"finger_mode": "fingers"}, r"finger_mode must be one of \('joints', 'synergy'\)"),
    ({"translation_m": -0.01}, "translation_m must be a finite number >= 0"),
    ({"rotation_rad": float("nan")}, "rotation_rad"),
    ({"randomize_yaw": "yes"}, "randomize_yaw must be true or false"),
    ({"success_reward": float("inf")}, "success_reward must be finite"),
    ({"penetration_limit_mm": -1.0}, "penetration_limit_mm"),
    ({"table_jiter_m": 0.1}, "unknown lift refine config field"),
])
def test_bad_configs(overrides, match):
    with pytest.raises(ConfigError, match=match):
        LiftRefineConfig().replace(**overrides)


def test_jitter_must_keep_objects_on_the_table(setup):
    with pytest.raises(ConfigError, match="off the table"):
        LiftRefineEnv(setup["template"], setup["data"], setup["env"].lift, LiftRefineConfig(table_jitter_m=0.5))


def test_draw_keeps_to_the_given_pairs(setup):
    data = setup["data"].replace(pairs=jnp.asarray([[2, 1], [0, 0]], jnp.int32))
    env = LiftRefineEnv(setup["template"], data, setup["env"].lift)
    index, pose_index, _, _ = jax.vmap(env.draw)(jax.random.split(jax.random.key(0), 64))
    assert set(zip(np.asarray(index).tolist(), np.asarray(pose_index).tolist())) == {(2, 1), (0, 0)}
    with pytest.raises(ConfigError, match=r"pairs must be \[K > 0, 2\]"):
        LiftRefineEnv(setup["template"], setup["data"].replace(pairs=jnp.zeros((0, 2), jnp.int32)), env.lift)


def test_pair_clearance_is_the_environments(setup, batch):
    """The host-side clearance matrix (which pairs an episode may draw) equals the clearance of
    the start states: the box grasp upright, pushed through the table, the cylinder's."""
    data = setup["data"]
    matrix = lift_env.pair_clearance(setup["template"], data.fields, data.grasps, data.object_id, data.poses, chunk=4)
    assert matrix.shape == (3, 2)
    rows, poses = [0, 1, 2], [0, 0, 1]
    np.testing.assert_allclose(matrix[rows, poses], batch["start"].info["clearance"][:3], atol=1e-5)
    assert matrix[1, 0] < 0 < matrix[0, 0]  # the pushed-down grasp reaches into the table


def test_edit_is_refine_envs_correction_within_the_bounds():
    rng = np.random.default_rng(0)
    grasps = np.stack([BOX_GRASP, CYLINDER_GRASP] * 4)
    grasps = jnp.asarray(grasp_lib.make_grasps(*grasp_lib.split_grasps(grasps)), jnp.float32)  # orthonormal rot6d
    config = LiftRefineConfig()
    edit = jax.jit(lift_env.edit, static_argnums=2)
    correct = jax.jit(refine_env.correct, static_argnums=2)
    np.testing.assert_allclose(edit(grasps, jnp.zeros((8, 29)), config), grasps, atol=1e-6)
    a = jnp.asarray(rng.uniform(-2, 2, (8, 29)), jnp.float32)
    out = np.asarray(edit(grasps, a, config), np.float64)
    np.testing.assert_allclose(out, correct(grasps, a, config.correction()), atol=1e-6)
    t0, r0, _ = grasp_lib.split_grasps(np.asarray(grasps, np.float64))
    t1, r1, _ = grasp_lib.split_grasps(out)
    assert np.all(np.abs(t1 - t0) <= config.translation_m + 1e-6)
    assert np.all(rotations.rotation_angle(r0, r1) <= config.rotation_rad * np.sqrt(3) + 1e-5)
    nan = edit(grasps, jnp.full((8, 29), jnp.nan), config)
    np.testing.assert_allclose(nan, grasps, atol=1e-6)  # a non-finite action is no edit
    # Synergy: wrist and closure only, the joint deltas of refine_env's layout zero.
    synergy = config.replace(finger_mode="synergy")
    a7 = jnp.asarray(rng.uniform(-1, 1, (8, 7)), jnp.float32)
    a29 = jnp.zeros((8, 29)).at[:, :6].set(a7[:, :6]).at[:, refine_env.CLOSURE_ACTION].set(a7[:, 6])
    np.testing.assert_allclose(edit(grasps, a7, synergy),
                               correct(grasps, a29, config.correction()), atol=1e-6)
    dq = np.asarray(edit(grasps, a7, synergy))[:, grasp_lib.JOINTS] - np.asarray(grasps)[:, grasp_lib.JOINTS]
    assert np.all(dq * np.sign(np.asarray(a7[:, 6:7])) * refine_env.CLOSURE >= -1e-6)  # along the closure


def test_yawed_pose_turns_about_world_z_and_keeps_up():
    quat = rotations.matrix_to_quat(rotations.rotvec_to_matrix(np.array([0.3, -0.2, 0.5])))
    pose = jnp.asarray(np.concatenate([[0.02, -0.01, 0.06], quat]), jnp.float32)
    out = np.asarray(lift_env.yawed_pose(pose, jnp.asarray(0.9), jnp.asarray([0.03, -0.04])))
    np.testing.assert_allclose(out[:3], [0.05, -0.05, 0.06], atol=1e-6)  # moved on the table, z kept
    r0, r1 = rotations.quat_to_matrix(np.asarray(pose[3:], np.float64)), rotations.quat_to_matrix(out[3:])
    rz = rotations.rotvec_to_matrix(np.array([0.0, 0.0, 0.9]))
    np.testing.assert_allclose(r1, rz @ r0, atol=1e-5)
    np.testing.assert_allclose(resting.up_direction(out[3:]), resting.up_direction(quat), atol=1e-5)


def test_draws_are_seeded_and_bounded(setup):
    env = setup["env"]
    draw = jax.jit(jax.vmap(env.draw))
    keys = jax.random.split(jax.random.key(0), 256)
    index, pose_index, yaw, offset = jax.device_get(draw(keys))
    for a, b in zip((index, pose_index, yaw, offset), jax.device_get(draw(keys))):
        np.testing.assert_array_equal(a, b)
    assert set(index.tolist()) == {0, 1, 2} and set(pose_index.tolist()) == {0, 1}
    assert np.all(np.abs(yaw) <= np.pi) and yaw.std() > 1.0
    assert np.all(np.abs(offset) <= env.config.table_jitter_m) and offset.std() > 0.02
    still = LiftRefineEnv(setup["template"], setup["data"], env.lift,
                          LiftRefineConfig(randomize_yaw=False, table_jitter_m=0.0))
    _, _, yaw, offset = jax.device_get(jax.jit(jax.vmap(still.draw))(keys[:8]))
    assert not yaw.any() and not offset.any()


# --- the simulated episode ------------------------------------------------------------------------


def test_shapes_and_reward_terms(setup, batch):
    env, start, nxt = setup["env"], batch["start"], batch["next"]
    b = FIXED + DRAWN
    _, _, radii = hold.capsule_points(setup["template"], setup["template"].blank_data)
    k = len(radii)  # the hand's capsule points
    e = setup["data"].encodings.shape[1]
    assert env.observation_size == 31 + e + 3 + 2 * k + 1
    assert start.obs.shape == nxt.obs.shape == (b, env.observation_size)
    assert nxt.reward.shape == (b,) and np.all(nxt.done == 1) and np.all(start.done == 0)
    assert np.all(np.isfinite(start.obs)) and np.all(np.isfinite(nxt.obs)) and np.all(np.isfinite(nxt.reward))
    terms = [f"reward/{t}" for t in lift_env.REWARD_TERMS]
    assert set(nxt.metrics) == {*terms, "success"}
    np.testing.assert_allclose(nxt.reward, sum(nxt.metrics[t] for t in terms), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(nxt.metrics["success"] > 0, nxt.info["success"])
    for key in ("index", "object_id", "pose", "grasp", "world_grasp", "success", "lift_height", "slip",
                "clearance"):
        assert key in nxt.info
    assert nxt.info["pose"].shape == (b, 7) and nxt.info["world_grasp"].shape == (b, 31)
    np.testing.assert_allclose(nxt.info["world_grasp"],
                               lift.grasp_to_world(nxt.info["grasp"].astype(np.float64),
                                                   nxt.info["pose"].astype(np.float64)), atol=1e-5)
    # The observation's parts: the grasp, the encoding, the up-direction (object frame).
    obs = start.obs
    np.testing.assert_allclose(obs[:, :31], np.asarray(setup["data"].grasps)[batch["args"][0]], atol=1e-6)
    up = resting.up_direction(start.info["pose"][:, 3:].astype(np.float64))
    np.testing.assert_allclose(obs[:, 31 + e:34 + e], up, atol=1e-4)


def test_known_grasp_lifts_through_the_env(setup, batch):
    """test_lift's box grasp on the upright box, no edit: the lift succeeds, the reward is
    nearly the success weight or more."""
    nxt, config = batch["next"], setup["env"].config
    assert nxt.info["success"][0], jax.tree_util.tree_map(lambda x: x[0], nxt.info)
    assert nxt.info["lift_height"][0] >= PROTOCOL.success_height_m
    assert nxt.info["clearance"][0] > 0 and nxt.metrics["reward/table"][0] == 0
    assert nxt.reward[0] > 0.9 * config.success_reward
    np.testing.assert_allclose(nxt.info["grasp"][0], BOX_GRASP, atol=1e-4)  # a zero action edits nothing
    # (but re-orthonormalises the rounded rot6d)


def test_grasp_through_the_table_is_penalised(batch):
    nxt = batch["next"]
    assert not nxt.info["success"][1]
    assert nxt.info["clearance"][1] < 0
    np.testing.assert_allclose(nxt.info["clearance"][1], nxt.info["clearance"][0] - DOWN_M, atol=2e-3)
    assert nxt.metrics["reward/table"][1] < -0.1 * 100 * (DOWN_M - nxt.info["clearance"][0]) * 0.9
    assert nxt.reward[1] < nxt.reward[0] - 1.0


def test_clearance_is_the_lift_protocols(setup, batch):
    """The env's clearance (one kinematics pass shared with the capsule points) is
    `lift.table_clearance` of the same world grasps, the figure the evaluation rejects by."""
    nxt = batch["next"]
    clearance = jax.jit(lambda g: lift.table_clearance(setup["template"], g),
                        compiler_options={"xla_backend_optimization_level": 0})
    np.testing.assert_allclose(nxt.info["clearance"], clearance(jnp.asarray(nxt.info["world_grasp"])),
                               atol=1e-5)


def test_nan_action_counts_as_zero(batch):
    nxt = batch["next"]
    assert np.all(np.isfinite(nxt.obs[3])) and np.isfinite(nxt.reward[3])
    np.testing.assert_allclose(nxt.info["grasp"][3], nxt.info["grasp"][0], atol=1e-6)
    assert nxt.info["success"][3] == nxt.info["success"][0]
    np.testing.assert_allclose(nxt.reward[3], nxt.reward[0], atol=1e-5)


def test_start_turns_and_moves_the_pose(setup, batch):
    start = batch["start"]
    rest = np.asarray(setup["data"].poses[1, 1])  # the cylinder's second pose, row 2
    np.testing.assert_allclose(start.info["pose"][2, :3], rest[:3] + [0.03, -0.02, 0.0], atol=1e-6)
    np.testing.assert_allclose(start.info["pose"][0], np.asarray(setup["data"].poses[0, 0]), atol=1e-6)


def test_same_inputs_same_episode(program, batch):
    """Starts drawn as `reset` draws them (rows 4, 5) and fixed starts: a second run is identical."""
    again = jax.device_get(program(*batch["args"]))
    for a, b in zip(jax.tree_util.tree_leaves(again), jax.tree_util.tree_leaves((batch["start"], batch["next"]))):
        np.testing.assert_array_equal(a, b)


def test_reset_is_start_of_a_draw(setup, batch):
    env = setup["env"]
    keys = jax.random.split(jax.random.key(7), DRAWN)
    shapes = jax.eval_shape(jax.vmap(env.reset), keys)
    assert shapes.obs.shape == (DRAWN, env.observation_size)
    drawn = jax.device_get(jax.jit(jax.vmap(env.draw))(keys))
    np.testing.assert_array_equal(batch["start"].info["index"][FIXED:], drawn[0])


def test_synergy_mode_on_the_mjx_backend_traces(setup, batch):
    """Synergy actions have 7 components; the MJX backend's step traces (no compile, no run:
    the trace alone takes ~20 s here)."""
    template, data = setup["template"], setup["data"]
    config = LiftRefineConfig(finger_mode="synergy")
    env = LiftRefineEnv(template, data, backends.MJX().world_lift_fn(template, data.fields), config)
    assert env.action_size == 7
    b = FIXED + DRAWN
    out = jax.eval_shape(jax.jit(jax.vmap(env.step)), batch["start"], jax.ShapeDtypeStruct((b, 7), jnp.float32))
    assert out.reward.shape == (b,) and out.obs.shape == (b, setup["env"].observation_size)
    assert out.info["success"].dtype == jnp.bool_ and out.info["world_grasp"].shape == (b, 31)


# --- the host side ----------------------------------------------------------------------------------


def test_heldout_pose_mask():
    np.testing.assert_array_equal(lift_env.heldout_pose_mask(5, 0.2), [0, 0, 0, 0, 1])
    np.testing.assert_array_equal(lift_env.heldout_pose_mask(10, 0.2), [0] * 8 + [1] * 2)
    assert not lift_env.heldout_pose_mask(1, 0.2).any() and not lift_env.heldout_pose_mask(4, 0.0).any()
    assert lift_env.heldout_pose_mask(2, 0.9).sum() == 1  # never every pose
    with pytest.raises(ConfigError, match="held-out fraction"):
        lift_env.heldout_pose_mask(5, 1.0)


def test_build_lift_problem_on_files(tmp_path, setup):
    from diffrl_jax.data.dexgraspnet import (
        load_dexgraspnet,
        write_dexgraspnet,
        write_mesh,
    )
    from diffrl_jax.data.example import example_dataset

    source, text = example_dataset("cylinder", 5)
    write_mesh(tmp_path, source.object_codes[0], text)
    write_dexgraspnet(tmp_path, source)
    dataset = load_dexgraspnet(tmp_path)
    budget = bank.ObjectBudget(pieces=2)
    with pytest.raises(ConfigError, match="poses per object"):
        lift_env.build_lift_problem(dataset, PROTOCOL, setup["backend"], budget, poses_per_object=0)
    problem = lift_env.build_lift_problem(dataset, PROTOCOL, setup["backend"], budget, poses_per_object=5)
    assert len(problem.entries) == 1 and problem.poses.shape == (1, 5, 7) and problem.up.shape == (1, 5, 3)
    np.testing.assert_allclose(problem.up, resting.up_direction(problem.poses[..., 3:].astype(np.float64)),
                               atol=1e-5)
    np.testing.assert_array_equal(problem.heldout_poses, [0, 0, 0, 0, 1])
    assert problem.heldout.sum() == 1 and problem.encodings.shape[0] == 1
    train = lift_env.lift_data(problem, np.flatnonzero(~problem.heldout))
    assert train.grasps.shape == (4, 31) and train.poses.shape == (1, 4, 7)
    np.testing.assert_allclose(train.poses, problem.poses[:, :4])
    held = lift_env.heldout_data(problem)
    assert held.grasps.shape == (1, 31) and held.poses.shape == (1, 1, 7)
    np.testing.assert_allclose(held.poses, problem.poses[:, 4:])
    np.testing.assert_allclose(held.grasps, dataset.grasps[problem.heldout], atol=1e-6)
    env = lift_env.make_lift_env(problem, LiftRefineConfig(), setup["backend"], heldout_poses=True)
    assert env.data.poses.shape == (1, 1, 7) and env.data.grasps.shape == (1, 31)
    assert lift_env.make_lift_env(problem, LiftRefineConfig(), setup["backend"]).data.grasps.shape == (4, 31)
    none = dataclasses.replace(problem, heldout_poses=np.zeros(5, bool))
    with pytest.raises(ConfigError, match="no held-out resting poses"):
        lift_env.heldout_data(none)
