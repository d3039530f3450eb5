"""The hold test on MuJoCo's C engine (`sim.mujoco_backend`).

A one-piece box and a short strict protocol keep it quick; the jitted
`hold.initial_state` compiles once for the module (a few seconds).
"""

import numpy as np
import pytest

from diffrl_jax.data import example
from diffrl_jax.data import grasps as grasp_lib
from diffrl_jax.data import rotations
from diffrl_jax.errors import ConfigError
from diffrl_jax.objects import assets
from diffrl_jax.scene import build_scene
from diffrl_jax.sim import bank, hold, mujoco_backend, protocol
from diffrl_jax.sim.protocol import NUM_DIRECTIONS

N = 4
FIELDS = ("success", "held", "translation", "rotation", "contact", "finite", "penetration_mm", "settled")


@pytest.fixture(scope="module")
def setup():
    budget = bank.ObjectBudget(pieces=1)
    template = bank.make_template(protocol.protocol("strict", hold_s=0.2), budget)
    prepared = bank.prepare_object(assets.builtin_object("box"), budget)
    grasps = example.kinematic_grasps(build_scene(prepared.asset(1.0)), N, seed=0)
    return template, prepared, grasps


@pytest.fixture(scope="module")
def result(setup):
    return mujoco_backend.hold_test_mujoco(*setup, nthread=2)


def _equal(a, b, rows=slice(None)):
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(a, name)[rows], getattr(b, name), err_msg=name)


def test_shapes_and_dtypes(result):
    d = NUM_DIRECTIONS
    assert result.success.shape == (N,) and result.success.dtype == bool
    assert result.penetration_mm.shape == (N,) and result.penetration_mm.dtype == np.float64
    for name in ("held", "contact", "finite"):
        assert getattr(result, name).shape == (N, d) and getattr(result, name).dtype == bool
    for name in ("translation", "rotation"):
        assert getattr(result, name).shape == (N, d) and getattr(result, name).dtype == np.float64
    assert result.finite.all()
    np.testing.assert_array_equal(result.success, result.held.all(axis=1))


def test_penetration_is_non_negative_millimetres(result):
    assert np.all(np.isfinite(result.penetration_mm))
    assert np.all(result.penetration_mm >= 0)
    assert np.all(result.penetration_mm < 5)  # kinematic grasps barely touch


def test_deterministic_across_calls_threads_and_chunks(setup, result):
    _equal(mujoco_backend.hold_test_mujoco(*setup, nthread=2), result)
    _equal(mujoco_backend.hold_test_mujoco(*setup, nthread=1), result)
    _equal(mujoco_backend.hold_test_mujoco(*setup, nthread=2, chunk=3), result)


def test_held_matches_the_protocol_bounds(setup, result):
    p = setup[0].protocol
    expected = (result.finite & (result.translation < p.translation_bound_m)
                & (result.rotation < p.rotation_bound_rad)
                & (result.penetration_mm <= p.penetration_bound_m * 1000)[:, None])
    np.testing.assert_array_equal(result.held, expected)


def test_a_hand_started_inside_the_object_holds_nothing(setup):
    """Pushed halfway to the box's centre, the hand starts centimetres deep: the
    contact solver then squeezes the box hard, but that is no grasp."""
    template, prepared, grasps = setup
    deep = grasps.copy()
    deep[:, :3] *= 0.5
    r = mujoco_backend.hold_test_mujoco(template, prepared, deep, nthread=2)
    inside = r.penetration_mm > template.protocol.penetration_bound_m * 1000
    assert inside.any()
    assert r.finite[inside].all() and not r.held[inside].any() and not r.success[inside].any()
    # Without the bound the same physics is judged on displacement alone.
    loose = bank.make_template(template.protocol.replace(penetration_bound_m=float("inf")),
                               bank.ObjectBudget(pieces=1))
    r_loose = mujoco_backend.hold_test_mujoco(loose, prepared, deep, nthread=2)
    np.testing.assert_array_equal(r_loose.translation, r.translation)
    np.testing.assert_array_equal(r_loose.held, r.finite & (r.translation < 0.02)
                                  & (r.rotation < template.protocol.rotation_bound_rad))


def test_grasps_from_qpos_inverts_the_placement_for_any_object_pose(setup):
    """The settled grasp's frames: a hand placed at grasp g relative to an object at
    any pose (R, p) reads back as g in the object's frame."""
    template, _, grasps = setup
    scene = template.scene
    rng = np.random.default_rng(0)
    quat = rng.normal(size=(N, 4))
    quat /= np.linalg.norm(quat, axis=1, keepdims=True)
    position = rng.normal(scale=0.1, size=(N, 3))
    world = grasp_lib.grasps_to_world(grasps, rotations.quat_to_matrix(quat), position)
    qpos = np.tile(scene.model.qpos0, (N, 1))
    qpos[:, scene.hand_qpos] = np.concatenate([grasp_lib.wrist_qpos(world), world[:, grasp_lib.JOINTS]], 1)
    qpos[:, scene.object_qpos:scene.object_qpos + 7] = np.concatenate([position, quat], 1)
    np.testing.assert_allclose(hold.grasps_from_qpos(template, qpos), grasps, atol=1e-9)
    # At the placement (object at the origin) too, in JAX.
    import jax.numpy as jnp
    placed = hold.initial_qpos(template, jnp.asarray(grasps, jnp.float32))
    np.testing.assert_allclose(np.asarray(hold.grasps_from_qpos(template, placed)), grasps, atol=1e-5)


def test_settled_grasps_are_where_the_squeeze_left_the_hand(setup, result):
    template, prepared, grasps = setup
    assert result.settled.shape == (N, grasp_lib.GRASP_DIM) and np.all(np.isfinite(result.settled))
    # The squeeze moves the fingers and pushes the box about a centimetre
    # (the palm is servoed, so the palm moves relative to the box).
    moved = result.settled - grasps
    assert np.abs(moved[:, grasp_lib.JOINTS]).max() > 1e-3
    assert np.all(np.linalg.norm(moved[:, :3], axis=1) < 0.03)
    # No settle: the settled grasp is the placement itself.
    instant = bank.make_template(template.protocol.replace(settle_s=0.0), bank.ObjectBudget(pieces=1))
    r = mujoco_backend.hold_test_mujoco(instant, prepared, grasps, nthread=2)
    np.testing.assert_allclose(r.settled, grasps, atol=1e-5)


def test_a_hand_touching_nothing_settles_where_it_was(setup):
    """Far from the box the fingers are already at their targets (no squeeze)
    and the box is free of force: nothing moves."""
    template, prepared, grasps = setup
    far = grasps.copy()
    far[:, 0] += 0.5
    r = mujoco_backend.hold_test_mujoco(template, prepared, far, nthread=2)
    np.testing.assert_allclose(r.settled, far, atol=1e-4)


def test_hand_far_from_the_object_fails_every_direction(setup):
    template, prepared, grasps = setup
    far = grasps.copy()
    far[:, 0] += 0.5
    r = mujoco_backend.hold_test_mujoco(template, prepared, far, nthread=2)
    assert r.finite.all()
    assert not r.held.any() and not r.success.any() and not r.contact.any()
    # Free fall under the pull for hold_s = 0.2 s: a * t^2 / 2 = 0.196 m.
    assert np.all(r.translation > 0.1)
    np.testing.assert_allclose(r.translation, 0.5 * 9.81 * 0.2 ** 2, rtol=0.05)
    np.testing.assert_array_equal(r.penetration_mm, 0.0)


def test_nan_grasp_fails_alone(setup, result):
    template, prepared, grasps = setup
    bad = np.concatenate([grasps[:2], grasps[:1], grasps[2:]])
    bad[2, 10] = np.nan  # a finger joint
    r = mujoco_backend.hold_test_mujoco(template, prepared, bad, nthread=2)
    assert not r.finite[2].any() and not r.held[2].any() and not r.success[2]
    assert np.all(np.isinf(r.translation[2])) and np.all(np.isinf(r.rotation[2]))
    assert np.all(np.isnan(r.settled[2]))
    _equal(r, result, rows=[0, 1, 3, 4])


def test_a_world_mujoco_resets_is_not_finite(setup, result, tmp_path, monkeypatch):
    """A huge object position makes MuJoCo warn and reset that world only."""
    template, prepared, grasps = setup
    monkeypatch.chdir(tmp_path)  # MuJoCo appends its warnings to ./MUJOCO_LOG.TXT
    qpos, ctrl = mujoco_backend.initial_state(template, prepared, grasps)
    qpos[1, template.scene.object_qpos] = 1e11
    r = mujoco_backend.hold_test_mujoco(template, prepared, grasps, nthread=2, qpos=qpos, ctrl=ctrl)
    assert not r.finite[1].any() and not r.held[1].any()
    assert np.all(np.isinf(r.translation[1]))
    for name in FIELDS:
        if name != "penetration_mm":
            np.testing.assert_array_equal(getattr(r, name)[[0, 2, 3]],
                                          getattr(result, name)[[0, 2, 3]], err_msg=name)


def test_given_initial_state_is_used(setup, result):
    template, prepared, grasps = setup
    qpos, ctrl = mujoco_backend.initial_state(template, prepared, grasps)
    assert qpos.shape == (N, template.scene.model.nq) and ctrl.shape == (N, template.scene.model.nu)
    _equal(mujoco_backend.hold_test_mujoco(template, prepared, grasps, qpos=qpos, ctrl=ctrl), result)


def test_bad_inputs_raise(setup):
    template, prepared, grasps = setup
    with pytest.raises(ConfigError):
        mujoco_backend.hold_test_mujoco(template, prepared, grasps[:, :30])
    with pytest.raises(ConfigError):
        mujoco_backend.hold_test_mujoco(template, prepared, grasps, qpos=np.zeros((N, 35)))
    with pytest.raises(ConfigError):
        mujoco_backend.hold_test_mujoco(template, prepared, grasps, nthread=0)


def test_no_grasps(setup):
    template, prepared, grasps = setup
    r = mujoco_backend.hold_test_mujoco(template, prepared, grasps[:0])
    assert r.success.shape == (0,) and r.held.shape == (0, NUM_DIRECTIONS)
