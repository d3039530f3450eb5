"""The hold test on MuJoCo's C engine (`sim.mujoco_backend`).

A one-piece box and a short strict protocol keep it quick; the jitted
`hold.initial_state` compiles once for the module (a few seconds).
"""

import numpy as np
import pytest

from diffrl_jax.data import example
from diffrl_jax.errors import ConfigError
from diffrl_jax.objects import assets
from diffrl_jax.scene import build_scene
from diffrl_jax.sim import bank, mujoco_backend, protocol
from diffrl_jax.sim.protocol import NUM_DIRECTIONS

N = 4
FIELDS = ("success", "held", "translation", "rotation", "contact", "finite", "penetration_mm")


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
