"""Helpers shared by the benchmarks: timing (warm up, then the median of repeats,
blocking on the result) and the trained run a benchmark may read."""
import jax

from genjax import hardware


def time_fn(fn, *args, repeats: int = 5, warmup: int = 1):
    """Median wall time of fn(*args) in seconds, blocking on the result."""
    return hardware.median_seconds(fn, *args, repeats=repeats, warmup=warmup)


def device_description() -> str:
    d = jax.devices()[0]
    return f"{jax.default_backend()} ({d.device_kind}, {jax.device_count()} device(s)), jax {jax.__version__}"


def trained_config(workdir: str, families, *, flag: str = "--workdir", template=None):
    """The config of the trained run in `workdir`, as it was trained
    (`experiments.run_config.load_run`: config.json with its recorded changes).
    Exits with code 2 and one line per problem when the workdir holds no trained
    run (no config.json or no checkpoint), or a run of a family not in `families`."""
    from experiments.configuration import ConfigError, exit_with
    from experiments.run_config import checkpoint_steps, load_run

    families = (families,) if isinstance(families, str) else tuple(families)
    try:
        config = load_run(workdir, template=template)
        if config.get("family") not in families:
            raise ConfigError(f"a {config.get('family')!r} run; this benchmark "
                              f"reads a run of family {' or '.join(map(repr, families))}")
        if not checkpoint_steps(workdir):
            raise ConfigError("config.json but no checkpoint: the run has not trained yet")
    except ConfigError as err:
        exit_with(ConfigError([f"{flag}={workdir}: {line}" for line in err.problems]))
    return config


def no_run_note(flag: str, what: str, why: str = "timings do not depend on training") -> str:
    """The line a benchmark prints when it times an untrained model instead of a run."""
    return f"no {flag} given: timing {what} ({why})"
