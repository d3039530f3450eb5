"""The named scenarios and refine presets: one place for the CLI, the pipeline and the sweeps.

A scenario is a set of hold-protocol field overrides; a refine preset is the
PPO config and adaptation settings of one kind of machine.
"""

from __future__ import annotations

SCENARIOS = {
    "default": {},
    "low-friction": {"friction": 0.5},
    "heavy": {"mass_scale": 2.0},
    "weak": {"finger_strength": 0.5},
}

# Presets: the CPU one is a reduced run on MuJoCo's C engine; the GPU one runs
# the hold test in MJX on the accelerator. Episodes of 3 corrections, each
# after the first from the last settled grasp: with 8 random attempts of std
# 0.1 that fixed 34 of 90 raw failures, one correction 9 (benchmarks/
# RESULTS.md, "The settled grasp"). The policy's initial spread is 0.1
# (action units): under the hold test's penetration bound, single random
# corrections of std 0.1 fixed 20 of 90 raw failures in 32 attempts, 0.05 18,
# 0.2 14 and 0.5 one (benchmarks/RESULTS.md, "The penetration bound").
# Exploration is per step, 0.2 on the first correction and none added on the
# settled ones: the same policy's attempts fixed 213 of the 519 shared raw
# failures so, 193 with 0.1 on every step (RESULTS, "Per-step exploration").
REFINE_PRESETS = {
    "cpu": {"backend": "mujoco", "ppo": dict(num_envs=128, num_iterations=40, num_minibatches=2,
                                             num_epochs=4, learning_rate=3e-4, entropy_cost=1e-3,
                                             init_action_std=0.1,
                                             policy_hidden_sizes=(256, 256),
                                             value_hidden_sizes=(256, 256)),
            "block": 5, "attempts": 32, "explore": [0.2, 0.0], "chunk": 64, "robustness": 16, "steps": 3},
    "gpu": {"backend": "mjx", "ppo": dict(num_envs=1024, num_iterations=60, num_minibatches=8,
                                          num_epochs=4, learning_rate=3e-4, entropy_cost=1e-3,
                                          init_action_std=0.1,
                                          policy_hidden_sizes=(256, 256),
                                          value_hidden_sizes=(256, 256)),
            "block": 5, "attempts": 128, "explore": [0.2, 0.0], "chunk": 1024, "robustness": 16, "steps": 3},
}


def explore_values(explore, preset: dict, steps: int) -> float | list[float]:
    """The adaptation's exploration std as run.json records it: one number, or one per step.

    `explore` is the user's (one number or a sequence), or None for the
    preset's; a preset's per-step values are cut to the episode's `steps`,
    while more values given than steps is the user's error (see
    `refine.exploration_schedule`). One value stays a number, so runs from
    before per-step values still resume.
    """
    values = preset["explore"] if explore is None else explore
    values = (values,) if isinstance(values, (int, float)) else tuple(values)
    if explore is None:
        values = values[:steps]
    return float(values[0]) if len(values) == 1 else [float(v) for v in values]
