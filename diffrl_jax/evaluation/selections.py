"""How pose sampling chooses one of a pose's sampled grasps (`pose_sampling`'s docstring
says what each does). A module of its own so the command line can list them without JAX."""

SELECTIONS = ("check", "contact", "first", "one-shot", "learned")


def check_modes(select, compare, what: str) -> None:
    """Raises `ConfigError` unless `select` and the tuple `compare` are distinct modes of
    SELECTIONS; `what` names the config ("pose sampling", "pipeline eval") in the message."""
    from diffrl_jax.errors import ConfigError

    if select not in SELECTIONS:
        raise ConfigError(f"{what} select must be one of {', '.join(SELECTIONS)}; got {select!r}")
    if not (isinstance(compare, tuple) and all(m in SELECTIONS for m in compare)):
        raise ConfigError(f"{what} compare must be a tuple of modes from {SELECTIONS}, got {compare!r}")
    if len(set((select, *compare))) != 1 + len(compare):
        raise ConfigError(f"{what} modes must differ, got select {select!r} and compare {compare!r}")
