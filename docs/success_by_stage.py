"""Draws docs/success_by_stage.png from the quick preset's run in benchmarks/RESULTS.md.

    python docs/success_by_stage.py

The figures are copied from RESULTS.md ("The pipeline, quick preset": 2-core CPU,
2026-11-21, `diffrl pipeline --preset quick --out runs/quick`), not recomputed.
"""

import pathlib

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402

STAGES = ("raw", "kept", "sampled", "pose sampling")
SUCCESS = {  # object -> success per stage
    "can": (0.031, 0.055, 0.180, 0.44),
    "box": (0.004, 0.020, 0.227, 0.50),
    "ball": (0.094, 0.953, 0.562, 0.88),
}


def main() -> None:
    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    width = 0.8 / len(SUCCESS)
    for k, (name, values) in enumerate(SUCCESS.items()):
        ax.bar([i + (k - 1) * width for i in range(len(STAGES))], values, width, label=name)
    ax.axhline(0.8, color="gray", linestyle="--", linewidth=1, label="paper: 80%")
    ax.set_xticks(range(len(STAGES)), STAGES)
    ax.set_ylim(0, 1.2)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("success")
    ax.set_title("diffrl pipeline --preset quick (2-core CPU, 2026-11-21)", fontsize=10)
    ax.legend(fontsize=8, ncols=4, loc="upper left")
    fig.tight_layout()
    fig.savefig(pathlib.Path(__file__).with_name("success_by_stage.png"))


if __name__ == "__main__":
    main()
