"""Reinforcement learning: PPO as pure functions (`ppo`) over brax `Env`s, and the
grasp-refinement environment it trains on (`refine_env`)."""

# brax imports `mujoco.mjx`, which prints "Failed to import warp" to stdout when
# the optional Warp backend is absent and would corrupt `--json` output; import
# it quietly first so brax finds it loaded.
from diffrl_jax.scene import import_mjx as _import_mjx

_import_mjx()
