"""What a config builds: the data source, the model, its optimizers and train function.

Every script that trains a family from a config (main, reflow's base flow,
ablate, the guidance sweep and the sampler study) builds it through `Experiment`,
and every one trains through `experiments.run_loop.run`.
"""
import jax
import numpy as np

from experiments import registry
from experiments.checkpoint import Checkpointer
from experiments.configuration import ConfigError
from genjax import train as train_lib

HOST_LOOP_CHOICES = ("auto", "on", "off")
# The config.optim keys `genjax.train.make_optimizer` injects into the optimizer state.
INJECTED_HYPERPARAMS = ("learning_rate", "b1", "b2", "weight_decay")


def make_optimizer(optim, total_steps: int):
    """(transformation, learning_rate_fn) of one config.optim section (or one group's)."""
    return train_lib.make_optimizer(
        learning_rate=optim.learning_rate, total_steps=total_steps,
        warmup_steps=optim.warmup_steps, schedule=optim.schedule,
        end_fraction=optim.get("end_fraction", 0.0), grad_clip=optim.grad_clip,
        weight_decay=optim.weight_decay, b1=optim.get("b1", 0.9), b2=optim.get("b2", 0.999))


def make_optimizers(config, groups: tuple, update_schedule=None):
    """One optimizer for a single-loss family (config.optim), or for a family with
    parameter groups a dict {group: optimizer} from config.optim.<group>.

    An optimizer's schedule counts its own updates, and a group updated n times per
    step (`update_schedule`, e.g. a GAN's n_critic) makes n per step: its total and
    warmup steps are n times the config's, which are in train steps for every group."""
    total = config.train.num_steps
    if not groups:
        return make_optimizer(config.optim, total)
    missing = [g for g in groups if g not in config.optim]
    if missing:
        raise ConfigError(f"family {config.family!r} has parameter groups {list(groups)}; config.optim "
                         f"has no section for {missing} (expected config.optim.<group>.learning_rate, ...)")
    counts = dict(update_schedule or ())

    def group_optimizer(g):
        n = counts.get(g, 1)
        section = config.optim[g].copy_and_resolve_references()
        section.warmup_steps = n * section.warmup_steps
        return make_optimizer(section, n * total)

    pairs = {g: group_optimizer(g) for g in groups}
    return {g: tx for g, (tx, _) in pairs.items()}, {g: fn for g, (_, fn) in pairs.items()}


class Experiment:
    """The data source, model, optimizer(s) and train function a config names."""

    def __init__(self, config, source=None):
        """`source`: reuse an already built data source (it must be the one `config` names)."""
        self.config = config
        self.family = registry.family_of(config)
        self.source = source if source is not None else registry.build_source_for(config)
        self.model = registry.build_model(config, self.source)
        self.tx, self.lr_fn = make_optimizers(config, self.model.groups, self.model.update_schedule)
        self.batch_fn = self.source.batch_fn(config.data.batch_size)
        self.key = jax.random.PRNGKey(config.seed)

    def init_state(self, key=None, **hyperparams):
        """The initial TrainState (of seed `key`, default the config's)."""
        example = self.source.example_batch(self.config.data.batch_size)
        return train_lib.init_state(self.model.init, self.tx, self.key if key is None else key, example,
                                    init_model_state=self.model.init_model_state, **hyperparams)

    def train_fn(self, mesh, steps_per_call=None, unroll=1):
        return train_lib.make_train_fn(
            self.model.loss, self.tx, ema_decay=self.config.optim.ema_decay,
            steps_per_call=steps_per_call or self.config.train.steps_per_call,
            batch_fn=self.batch_fn, mesh=mesh, learning_rate_fn=self.lr_fn, unroll=unroll,
            grad_accum_steps=self.config.train.get("grad_accum_steps", 1),
            update_schedule=self.model.update_schedule, ema_groups=self.model.ema_groups)

    def host_loop(self) -> bool:
        """train.host_loop: "on" steps from Python (one jitted step per call), "off"
        scans steps_per_call steps in one program, "auto" steps from Python on CPU
        for convolutional networks (XLA:CPU runs convolution gradients inside a
        loop tens of times slower than in straight-line code)."""
        choice = self.config.train.get("host_loop", "auto")
        if choice not in HOST_LOOP_CHOICES:
            raise ConfigError(f"train.host_loop={choice!r}; expected one of {HOST_LOOP_CHOICES}")
        if choice == "auto":
            return jax.default_backend() == "cpu" and self.family.convolutional(self.config)
        return choice == "on"

    def compiled_train_fn(self, mesh):
        """jit(train_fn) over train.steps_per_call steps, or the same steps one jitted
        step at a time from Python (`host_loop`)."""
        if self.host_loop():
            one = jax.jit(self.train_fn(mesh, steps_per_call=1, unroll=True), donate_argnums=0)
            return train_lib.host_loop(one, self.config.train.steps_per_call)
        return jax.jit(self.train_fn(mesh), donate_argnums=0)

    def config_hyperparams(self) -> dict:
        """The config's values of the optimizer hyperparameters kept in the optimizer
        state: {name: value}, or {"group.name": value} for parameter groups."""
        optim = self.config.optim
        if self.model.groups:
            return {f"{g}.{n}": optim[g][n] for g in self.model.groups for n in INJECTED_HYPERPARAMS
                    if n in optim[g]}
        return {n: optim[n] for n in INJECTED_HYPERPARAMS if n in optim}

    def checked_first_step(self, make_step, on_ready=None):
        """make_step(mesh) whose step, at its first call (given the state restored
        from the newest checkpoint, or a fresh one), first
        - checks that every array of the state has the shape this config's model
          gives it: a checkpoint restores the shapes it was saved with, so a
          changed width would otherwise fail inside flax (ConfigError naming the
          first array that differs);
        - sets the injected optimizer hyperparameters to the config's values where
          they differ: a checkpoint brings the learning rates, betas and weight
          decay it was trained with, so a change accepted on resume
          (`experiments.run_config`, --allow_config_change=optim.learning_rate)
          would otherwise be recorded but ignored; a fresh run, or one resumed
          with its own config, is left as it is;
        - calls on_ready(state), once the run is known to be consistent
          (`experiments.main.train` writes config.json or records the accepted
          changes there)."""
        wanted = self.config_hyperparams()

        def make(mesh):
            step_fn = make_step(mesh)
            pending = [True]

            def step(state):
                if pending:
                    if int(state.step) > 0:  # restored
                        _check_shapes(state, jax.eval_shape(self.init_state))
                    state = _with_hyperparams(state, wanted)
                    if on_ready is not None:
                        on_ready(state)
                    pending.clear()
                return step_fn(state)

            return step

        return make

    def model_kwargs(self, state) -> dict:
        """Keywords that `model.sample` / `model.log_prob` need besides the config's:
        the model state of a family that has one."""
        return {} if state.model_state is None else {"model_state": state.model_state}

    def likelihood_note(self) -> str | None:
        """Why the model has no likelihood on this data (the family's note), else None."""
        return self.family.likelihood_note(self.config, self.source)

    def log_prob_kwargs(self, state) -> dict | None:
        """`model.log_prob` keywords from config.eval; None when the family has no
        likelihood, or none on this data (`likelihood_note`)."""
        kwargs = registry.log_prob_kwargs(self.config)
        if kwargs is None or self.likelihood_note() is not None:
            return None
        return {**kwargs, **self.model_kwargs(state)}

    def restore(self, workdir: str):
        """The newest checkpoint of `workdir` (FileNotFoundError when there is none)."""
        ckpt = Checkpointer(workdir, keep=self.config.train.keep_checkpoints)
        try:
            state = ckpt.restore(self.init_state())
        finally:
            ckpt.close()
        if state is None:
            raise FileNotFoundError(f"no checkpoint in {workdir!r}; run --mode=train first")
        return state


def _with_hyperparams(state, wanted: dict):
    """`state` with the injected hyperparameters in `wanted` that differ set to those
    values, each placed as the value it replaces."""
    current = jax.device_get(train_lib.get_hyperparams(state.opt_state))
    differ = {k: v for k, v in wanted.items()
              if k in current and np.asarray(v, np.asarray(current[k]).dtype) != current[k]}
    if not differ:
        return state
    old = state.opt_state
    new = train_lib.set_hyperparams(old, **differ)
    new = jax.tree_util.tree_map(lambda n, o: n if n is o else jax.device_put(n, o.sharding), new, old)
    return state._replace(opt_state=new)


def _check_shapes(state, expected) -> None:
    """Raises ConfigError when `state` (restored) and `expected` (the config's
    abstract state) differ in structure or in the shape of an array."""
    def named(tree):
        leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
        return {jax.tree_util.keystr(path): np.shape(leaf) for path, leaf in leaves}, treedef

    have, have_def = named(state)
    want, want_def = named(expected)
    differ = [f"{path}: saved {have[path]} -> requested {want[path]}" for path in want
              if path in have and have[path] != want[path]]
    if differ or have_def != want_def:
        what = differ[0] if differ else (f"saved arrays {sorted(set(have) - set(want))[:3]}, requested "
                                         f"{sorted(set(want) - set(have))[:3]}")
        raise ConfigError(f"the checkpoint holds arrays of other shapes than this config's model "
                          f"({len(differ) or 'a different set of'} arrays differ; {what}); a change of "
                          f"shapes (a width, a depth, the data) cannot resume: start a new run in "
                          f"another --workdir")
