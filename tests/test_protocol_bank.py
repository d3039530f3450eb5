"""Protocol configs, object budgets and the per-object model fields (no physics)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffrl_jax.errors import ConfigError
from diffrl_jax.objects import assets
from diffrl_jax.scene import build_scene
from diffrl_jax.sim import bank, hold, protocol


def test_presets_and_overrides():
    strict = protocol.protocol("strict")
    assert strict.translation_bound_m == 0.02
    assert math.isclose(strict.rotation_bound_rad, math.radians(15))
    assert strict.penetration_bound_m == 0.005
    assert protocol.protocol("strict", penetration_bound_m=math.inf).penetration_bound_m == math.inf
    assert strict.total_steps == strict.settle_steps + 6 * strict.hold_steps
    dgn = protocol.protocol("dexgraspnet")
    assert dgn.physics.friction == 3.0 and dgn.squeeze.depth_m == 0.001 and dgn.require_contact
    assert math.isclose(dgn.hold_s, 100 / 60)
    assert protocol.protocol("strict", friction=0.5).physics.friction == 0.5


@pytest.mark.parametrize("overrides, match", [
    ({"friction": -1.0}, "friction must be positive"),
    ({"friction": float("nan")}, "friction must be positive"),
    ({"hold_s": 0.0}, "hold_s must be positive"),
    ({"squeeze_m": -0.001}, "squeeze.depth_m"),
    ({"timestep": 0.5}, "too coarse"),
    ({"max_contacts": 0}, "max_contacts"),
    ({"penetration_bound_m": 0.0}, "penetration_bound_m must be positive"),
    ({"penetration_bound_m": float("nan")}, "penetration_bound_m must be positive"),
    ({"frition": 1.0}, "unknown protocol field"),
])
def test_bad_protocols(overrides, match):
    with pytest.raises(ConfigError, match=match):
        protocol.protocol("strict", **overrides)


def test_declared_checks_name_the_nested_field():
    """Each field's valid values are declared with it; the message gives its dotted path."""
    with pytest.raises(ConfigError) as info:
        protocol.protocol("strict", friction=-1.0)
    assert str(info.value) == "protocol field physics.friction must be positive, got -1.0"
    with pytest.raises(ConfigError) as info:
        protocol.HoldProtocol(squeeze=protocol.SqueezeConfig(reach_m=math.nan)).validate()
    assert str(info.value) == "protocol field squeeze.reach_m must be a finite number >= 0, got nan"
    with pytest.raises(ConfigError) as info:
        protocol.PhysicsConfig(max_contacts=2.5).validate()
    assert str(info.value) == "physics field max_contacts must be a positive integer, got 2.5"
    assert protocol.PhysicsConfig(friction=3.0).validate().friction == 3.0


def test_protocols_written_nested_or_flat_read_back():
    """`HoldProtocol.from_json` reads `protocol_json` (nested) and the flat records of older runs."""
    import json

    from diffrl_jax.sim.validate import protocol_json

    dgn = protocol.DEXGRASPNET
    nested = json.loads(json.dumps(protocol_json(dgn)))  # strict JSON: inf as null
    assert nested["physics"]["friction"] == 3.0 and nested["squeeze"]["depth_m"] == 0.001
    assert nested["translation_bound_m"] is None
    assert protocol.HoldProtocol.from_json(nested) == dgn
    flat = {"name": "dexgraspnet", "friction": 3.0, "finger_strength": 1.0, "finger_kp": 3.0,
            "object_density": 500.0, "mass_scale": 1.0, "timestep": 0.004, "impratio": 1.0,
            "max_contacts": 64, "squeeze_m": 0.001, "squeeze_distance_m": 0.01, "squeeze_closure_rad": 0.0,
            "acceleration": 9.81, "settle_s": 0.0, "hold_s": 100 / 60, "translation_bound_m": None,
            "rotation_bound_rad": None, "require_contact": True, "penetration_bound_m": 0.005}
    assert protocol.HoldProtocol.from_json(flat) == dgn
    with pytest.raises(ConfigError, match="unknown protocol field"):
        protocol.HoldProtocol.from_json({**flat, "gravity": 1.0})
    with pytest.raises(ConfigError, match="physics.friction must be positive"):
        protocol.HoldProtocol.from_json({**nested, "physics": {**nested["physics"], "friction": -1.0}})


def test_lift_protocol_round_trips_through_json():
    import json

    from diffrl_jax import configs
    from diffrl_jax.sim import lift

    upright = lift.LiftProtocol().replace(orientation="upright", friction=0.5)
    record = json.loads(json.dumps(configs.to_json(upright)))
    assert record["physics"]["impratio"] == 10.0 and record["table_size"] == [0.4, 0.4, 0.02]
    assert lift.LiftProtocol.from_json(record) == upright
    assert lift.LiftProtocol.from_json({"orientation": "upright", "friction": 0.5}) == upright  # flat


def test_unknown_protocol_name():
    with pytest.raises(ConfigError, match="unknown protocol"):
        protocol.protocol("isaac")


@pytest.mark.parametrize("budget, match", [
    (bank.ObjectBudget(pieces=0), "pieces"),
    (bank.ObjectBudget(vertices=3), "vertices"),
    (bank.ObjectBudget(faces=10), "faces"),
    (bank.ObjectBudget(face_vertices=30), "face_vertices"),
])
def test_bad_budgets(budget, match):
    with pytest.raises(ConfigError, match=match):
        budget.validate()


def test_too_many_pieces_are_merged():
    mug = assets.builtin_object("mug")  # 1 + 12 wall + handle pieces
    prepared = bank.prepare_object(mug, bank.ObjectBudget(pieces=4))
    assert len(prepared.pieces) == 4 and prepared.merged > 0
    assert prepared.convex["vert"].shape == (4, 32, 3)
    assert math.isclose(prepared.mass, mug.mass, rel_tol=1e-6)


def test_mass_scale_and_density():
    box = bank.prepare_object(assets.builtin_object("box"), bank.ObjectBudget(pieces=2), mass_scale=2.0)
    assert math.isclose(box.mass, 0.4, rel_tol=1e-6)
    cube = assets.ObjectAsset("cube", (assets.Primitive("box", (0.05, 0.05, 0.05)),))
    prepared = bank.prepare_object(cube, bank.ObjectBudget(pieces=1), density=1000.0)
    assert math.isclose(prepared.mass, 1000.0 * 0.1**3, rel_tol=1e-6)


@pytest.fixture(scope="module")
def template():
    return bank.make_template(protocol.STRICT, bank.ObjectBudget(pieces=2))


def test_fields_match_a_scene_of_the_real_object(template):
    """The swapped-in fields equal those MuJoCo compiles for the object's own scene."""
    prepared = bank.prepare_object(assets.builtin_object("bottle"), template.budget)
    fields = template.fields(prepared)
    real = build_scene(prepared.asset(1.0), bank.scene_config(template.protocol)).model
    for name in ("body_mass", "body_subtreemass", "body_invweight0", "dof_invweight0"):
        np.testing.assert_allclose(getattr(fields, name), getattr(real, name), rtol=1e-6, atol=1e-9,
                                   err_msg=name)
    # Padding slots sit far below the object.
    assert fields.vert.shape[0] == 2


def test_surface_distance_of_a_box(template):
    prepared = bank.prepare_object(assets.builtin_object("box"), template.budget)  # 5 x 7 x 12 cm
    fields = jax.tree_util.tree_map(jnp.asarray, template.fields(prepared))
    points = jnp.array([[0.1, 0.0, 0.0], [0.0, -0.05, 0.0], [0.0, 0.0, 0.07], [0.0, 0.0, 0.0]])
    dist, normal = jax.jit(hold.surface_distance)(fields, points)
    np.testing.assert_allclose(dist, [0.075, 0.015, 0.01, -0.025], atol=1e-6)
    np.testing.assert_allclose(normal[:3], [[1, 0, 0], [0, -1, 0], [0, 0, 1]], atol=1e-6)
