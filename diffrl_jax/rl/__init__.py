"""Reinforcement learning: PPO as pure functions (`ppo`) over brax `Env`s, and the
grasp-refinement environment it trains on (`refine_env`)."""
