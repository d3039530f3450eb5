"""Choosing among sampled grasps: the shortlist of clear candidates, the choice after the
hold check, the check's protocol, bad configs (pure functions), and the check itself on
both backends."""

import dataclasses

import numpy as np
import pytest


from diffrl_jax.errors import ConfigError
from diffrl_jax.evaluation import pose_sampling
from diffrl_jax.sim import lift
from diffrl_jax.sim.protocol import HoldProtocol


def test_shortlist_orders_clear_candidates_by_score():
    score = np.array([[0.3, 0.1, 0.2, 0.0],
                      [0.5, 0.4, 0.3, 0.2]], np.float32)
    clear = np.array([[True, True, True, False],  # the best score is not clear
                      [False, True, False, False]])  # one clear candidate only
    index, valid = map(np.asarray, pose_sampling.shortlist(score, clear, 3))
    np.testing.assert_array_equal(index[0], [1, 2, 0])
    np.testing.assert_array_equal(valid[0], [True, True, True])
    assert index[1, 0] == 1
    np.testing.assert_array_equal(valid[1], [True, False, False])
    # m larger than K: all K come back.
    index, valid = pose_sampling.shortlist(score, clear, 10)
    assert index.shape == valid.shape == (2, 4)


def test_choose_modes_without_simulating():
    """contact: the clear candidate of lowest score; first: the first clear one; one-shot:
    candidate 0 whatever it is, a pose whose first sample is not clear counting as failed."""
    score = np.array([[0.3, 0.1, 0.2, 0.0],
                      [0.5, 0.4, 0.3, 0.2],
                      [0.1, 0.2, 0.3, 0.4]], np.float32)
    clear = np.array([[True, True, True, False],
                      [False, False, True, True],
                      [False, False, False, False]])
    chosen = {mode: tuple(map(np.asarray, pose_sampling.choose(score, clear, mode)))
              for mode in ("contact", "first", "one-shot")}
    np.testing.assert_array_equal(chosen["contact"][0][:2], [1, 3])
    np.testing.assert_array_equal(chosen["first"][0][:2], [0, 2])
    np.testing.assert_array_equal(chosen["one-shot"][0], [0, 0, 0])
    np.testing.assert_array_equal(chosen["one-shot"][1], [True, False, False])
    for mode in ("contact", "first"):
        np.testing.assert_array_equal(chosen[mode][1], [True, True, False])
    # learned: the clear candidate of highest (learned) score, higher being better.
    index, any_clear = map(np.asarray, pose_sampling.choose(score, clear, "learned"))
    np.testing.assert_array_equal(index[:2], [0, 2])
    np.testing.assert_array_equal(any_clear, [True, True, False])


def test_choose_checked_prefers_most_directions_then_contact_order():
    held = np.array([[3, 6, 6, 2],   # two hold in all six: the first of them (better contact score)
                     [6, 1, 0, 0],   # the best-held one is invalid (not clear)
                     [0, 0, 0, 0],   # none holds: the first valid one
                     [5, 5, 5, 5]])  # nothing valid: 0 (the pose counts as a failure)
    valid = np.array([[True, True, True, True],
                      [False, True, True, False],
                      [False, False, True, True],
                      [False, False, False, False]])
    np.testing.assert_array_equal(pose_sampling.choose_checked(held, valid), [1, 1, 2, 0])


def test_check_protocol_has_the_lift_physics():
    protocol = lift.LiftProtocol().replace(friction=0.5, mass_scale=2.0, impratio=3.0,
                                           squeeze_closure_rad=0.05, finger_strength=0.8)
    check = pose_sampling.hold_protocol_for(protocol)
    # Composed, not copied: the check holds the lift's own physics and squeeze.
    assert check.physics is protocol.physics and check.squeeze is protocol.squeeze
    assert (check.physics.friction, check.physics.mass_scale, check.physics.impratio,
            check.squeeze.closure_rad, check.physics.finger_strength) == (0.5, 2.0, 3.0, 0.05, 0.8)
    # The judgement is the strict hold test's.
    strict = HoldProtocol()
    assert (check.translation_bound_m, check.rotation_bound_rad, check.hold_s) == (
        strict.translation_bound_m, strict.rotation_bound_rad, strict.hold_s)


@pytest.mark.parametrize("field, value, message", [
    ("select", "best", "select must be one of"),
    ("check_top", 0, "check_top must be a positive integer"),
    ("candidates", 0, "candidates must be a positive integer"),
])
def test_bad_config(field, value, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(pose_sampling.PoseSamplingConfig(), **{field: value}).validate()
