"""The ShadowHand: constants (names, limits) and its MuJoCo model."""

from diffrl_jax.hand import constants
from diffrl_jax.hand.shadow import WRIST_JOINT_NAMES, HandConfig, add_hand, hand_spec
