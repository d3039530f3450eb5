"""How pose sampling chooses one of a pose's sampled grasps (`pose_sampling`'s docstring
says what each does). A module of its own so the command line can list them without JAX."""

SELECTIONS = ("check", "contact", "first", "one-shot")
