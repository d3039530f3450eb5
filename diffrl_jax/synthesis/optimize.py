"""Grasp synthesis by DexGraspNet's annealed optimisation, batched and jitted.

Initial poses (DexGraspNet's `initialize_convex_hull`, with its ShadowHand
joint prior): the palm's inner face (local -y) looks at a random point of the
object's convex hull from a few centimetres outside, turned by a random roll
about the approach and tilted by up to 30 degrees; the joints are drawn from
a normal around a slightly curled hand with the thumb opposed, within limits;
4 of the 140 contact candidates are drawn at random.

Each step (DexGraspNet's `Annealing` optimiser) moves every grasp along its
energy gradient, scaled per coordinate by the batch's RMS gradient (an
RMSProp step of size s), redraws each contact index with probability 1/2,
and keeps the proposal by the Metropolis rule at temperature T; s and T decay
geometrically. The whole run is one `lax.scan`: a pure function of the key,
the object and the config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffrl_jax import configs
from diffrl_jax.configs import between, integer, non_negative, positive
from diffrl_jax.data import grasps as grasp_lib
from diffrl_jax.errors import ConfigError
from diffrl_jax.hand import constants
from diffrl_jax.hand.poses import PALM_CENTRE
from diffrl_jax.synthesis import energy as energy_lib
from diffrl_jax.synthesis import hand_model as hm

# DexGraspNet's initial joint angles for the ShadowHand (JOINT_NAMES order):
# fingers slightly curled at the middle joint, the thumb rotated to oppose.
JOINT_PRIOR_MEAN = np.array([0.1, 0, 0.6, 0, 0, 0, 0.6, 0, -0.1, 0, 0.6, 0,
                             0, -0.2, 0, 0.6, 0, 0, 1.2, 0, -0.2, 0], dtype=np.float64)
JOINT_PRIOR_STD = 0.2 * (constants.JOINT_RANGES[:, 1] - constants.JOINT_RANGES[:, 0])


@dataclasses.dataclass(frozen=True)
class SynthesisConfig:
    """DexGraspNet's optimiser settings (its defaults unless noted)."""

    steps: int = integer(6000)
    contacts: int = integer(4, min=2, max=16)
    step_size: float = positive(0.005, finite=True)
    step_size_period: int = integer(50)
    starting_temperature: float = positive(18.0, finite=True)
    annealing_period: int = integer(30)
    temperature_decay: float = between(0.95, 0.0, 1.0)
    switch_probability: float = between(0.5)
    rms_weight: float = between(0.98)  # DexGraspNet's `mu`: weight of the newest squared gradient
    # Initial palm: its inner face this far outside the convex hull (m), tilt (rad).
    distance_low: float = non_negative(0.02)
    distance_high: float = non_negative(0.05)
    tilt_max: float = between(np.pi / 6, 0.0, np.pi)
    surface_points: int = integer(1024)  # object surface samples of the penetration term (DexGraspNet: 2000)
    weights: energy_lib.EnergyWeights = energy_lib.EnergyWeights()

    def __post_init__(self):
        configs.check(self, "synthesis config")
        if self.distance_high < self.distance_low:
            raise ConfigError(f"synthesis config: distance_high ({self.distance_high}) is below distance_low "
                              f"({self.distance_low})")

    def replace(self, **overrides) -> SynthesisConfig:
        return configs.replace(self, overrides, "synthesis config")  # __post_init__ checks the result


def hull_samples(pieces, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` points on the object's convex hull, area-weighted, with the hull's outward normals."""
    from diffrl_jax.objects import assets, encoding

    hull = assets.convex_hull(np.concatenate([np.asarray(p, dtype=np.float64) for p in pieces]))
    points, face = encoding.surface_samples(hull.points, hull.simplices, n, seed)
    return points, hull.equations[face, :3]


def _rotation_facing(approach: jax.Array, roll: jax.Array) -> jax.Array:
    """The palm rotation whose local -y is `approach` (unit [3]), rolled by `roll` about it."""
    y = -approach
    helper = jnp.where(jnp.abs(y[2]) < 0.9, jnp.array([0.0, 0.0, 1.0]), jnp.array([1.0, 0.0, 0.0]))
    x0 = jnp.cross(helper, y)
    x0 = x0 / jnp.linalg.norm(x0)
    z0 = jnp.cross(x0, y)
    x = jnp.cos(roll) * x0 + jnp.sin(roll) * z0
    z = jnp.cross(x, y)
    return jnp.stack([x, y, z], axis=-1)


def initial_grasps(key: jax.Array, hull_points: jax.Array, hull_normals: jax.Array, n: int,
                   config: SynthesisConfig) -> jax.Array:
    """[n, 31] initial grasps around the hull samples (object frame, metres)."""
    k_point, k_roll, k_tilt_axis, k_tilt, k_dist, k_joint = jax.random.split(key, 6)
    pick = jax.random.randint(k_point, (n,), 0, hull_points.shape[0])
    point, normal = hull_points[pick], hull_normals[pick]
    roll = jax.random.uniform(k_roll, (n,), minval=0.0, maxval=2 * jnp.pi)
    axis = jax.random.normal(k_tilt_axis, (n, 3))
    axis = axis - jnp.sum(axis * normal, -1, keepdims=True) * normal  # tilt the approach sideways
    axis = axis / jnp.linalg.norm(axis, axis=-1, keepdims=True)
    tilt = jax.random.uniform(k_tilt, (n,), minval=0.0, maxval=config.tilt_max)
    tilt_rot = jax.vmap(hm._axis_angle)(axis, tilt)
    approach = jnp.einsum("nij,nj->ni", tilt_rot, -normal)
    rotation = jax.vmap(_rotation_facing)(approach, roll)
    distance = jax.random.uniform(k_dist, (n, 1), minval=config.distance_low, maxval=config.distance_high)
    centre = point - distance * approach
    translation = centre - rotation @ jnp.asarray(PALM_CENTRE, jnp.float32)
    low = jnp.asarray(constants.JOINT_RANGES[:, 0], jnp.float32)
    high = jnp.asarray(constants.JOINT_RANGES[:, 1], jnp.float32)
    mean, std = jnp.asarray(JOINT_PRIOR_MEAN, jnp.float32), jnp.asarray(JOINT_PRIOR_STD, jnp.float32)
    z = jax.random.truncated_normal(k_joint, (low - mean) / std, (high - mean) / std, (n, constants.NUM_JOINTS))
    joints = mean + std * z
    return grasp_lib.make_grasps(translation, rotation, joints)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SynthesisState:
    grasps: jax.Array  # [B, 31]
    contacts: jax.Array  # [B, n] contact candidate indices
    energy: jax.Array  # [B]
    grad: jax.Array  # [B, 31] gradient at `grasps`
    rms: jax.Array  # [31] running mean squared gradient
    accepted: jax.Array  # [B] proposals accepted after the first


def _canonical(grasps: jax.Array) -> jax.Array:
    """Re-orthonormalise the rot6d part (the energy reads it through Gram-Schmidt anyway)."""
    t, r, j = grasp_lib.split_grasps(grasps)
    return grasp_lib.make_grasps(t, r, j)


@dataclasses.dataclass(frozen=True)
class Synthesizer:
    """Jitted programs for a batch of `batch` grasps; reused for every object of equal array shapes.

    init(key, sdf, hull_points, hull_normals) -> state
    run(key, sdf, state, first_step) -> state after `chunk` more steps
    energy(sdf, grasps, contacts) -> (total [B], terms {name: [B]})
    """

    init: Callable
    run: Callable
    energy: Callable
    batch: int
    chunk: int


def make_synthesizer(config: SynthesisConfig, batch: int, chunk: int) -> Synthesizer:
    """The synthesis programs for `batch` grasps at a time, `chunk` steps per `run` call."""
    hand = hm.hand_model()
    weights = config.weights

    def batch_energy(sdf, grasps, contacts):
        terms = jax.vmap(lambda g, c: energy_lib.energy_terms(hand, sdf, g, c))(grasps, contacts)
        return energy_lib.total_energy(terms, weights), terms

    def value_and_grad(sdf, grasps, contacts):
        def total(g):
            e, _ = batch_energy(sdf, g, contacts)
            return jnp.sum(e), e
        (_, e), g = jax.value_and_grad(total, has_aux=True)(grasps)
        return e, g

    @jax.jit
    def init(key, sdf, hull_points, hull_normals):
        k_grasp, k_contact = jax.random.split(key)
        grasps = initial_grasps(k_grasp, hull_points, hull_normals, batch, config)
        contacts = jax.random.randint(k_contact, (batch, config.contacts), 0, hand.num_contacts)
        # Infinite energy and zero gradient: step 0 proposes the initial grasps
        # themselves and always accepts them, so only `run` holds the energy's
        # program (one compile, not two).
        del sdf
        return SynthesisState(grasps, contacts, jnp.full(batch, jnp.inf), jnp.zeros_like(grasps),
                              jnp.zeros(grasps.shape[-1]), jnp.full(batch, -1, jnp.int32))

    def step(carry, inputs):
        state, sdf = carry
        key, i = inputs
        k_switch, k_index, k_accept = jax.random.split(key, 3)
        s = config.step_size * config.temperature_decay ** (i // config.step_size_period)
        temperature = config.starting_temperature * config.temperature_decay ** (i // config.annealing_period)
        rms = config.rms_weight * jnp.mean(state.grad ** 2, 0) + (1 - config.rms_weight) * state.rms
        proposal = _canonical(state.grasps - s * state.grad / (jnp.sqrt(rms) + 1e-6))
        switch = jax.random.uniform(k_switch, state.contacts.shape) < config.switch_probability
        contacts = jnp.where(switch, jax.random.randint(k_index, state.contacts.shape, 0, hand.num_contacts),
                             state.contacts)
        e, g = value_and_grad(sdf, proposal, contacts)
        accept = jax.random.uniform(k_accept, e.shape) < jnp.exp((state.energy - e) / temperature)
        # A proposal with a non-finite energy or gradient is never kept: its
        # gradient would enter the batch's RMS and stall every grasp.
        accept = (accept | jnp.isinf(state.energy)) & jnp.isfinite(e) & jnp.all(jnp.isfinite(g), -1)

        def pick(new, old):
            return jnp.where(accept.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)

        state = SynthesisState(pick(proposal, state.grasps), pick(contacts, state.contacts),
                               pick(e, state.energy), pick(g, state.grad), rms,
                               state.accepted + accept.astype(jnp.int32))
        return (state, sdf), None

    @jax.jit
    def run(key, sdf, state, first_step):
        keys = jax.random.split(key, chunk)
        steps = first_step + jnp.arange(chunk)
        (state, _), _ = jax.lax.scan(step, (state, sdf), (keys, steps))
        return state

    return Synthesizer(init=init, run=run, energy=jax.jit(batch_energy), batch=batch, chunk=chunk)
