"""One trainer for every family.

Any `loss(params, key, batch) -> (scalar, metrics)` becomes a jitted, optionally
scanned and data-parallel train function with an optax optimizer, gradient
clipping, a warmup/cosine schedule and an EMA of the parameters. Ensembles of K
configurations (seeds and float hyperparameters such as the learning rate) train
in one program with `jax.vmap` over a leading axis of the state.

Families with several players or with state use the same train function
(docs/protocol.md): parameter groups with their own losses, optimizers and an
update schedule (a GAN's n_critic critic updates per generator update), and model
state that is threaded through the loss but never optimized (a replay buffer).

Determinism: the RNG of step s is fold_in(fold_in(run_key, 0), s) and the batch of
step s is batch_fn(fold_in(run_key, 1), s) (update j of a U-update step: key
fold_in(step key, j), batch index s U + j), so a run resumed from a checkpoint
equals one that never stopped.

Memory: `grad_accum_steps` splits each batch into micro-batches whose gradients
are averaged before one optimizer update; a mesh with an `fsdp` axis shards the
parameters, their EMA and the optimizer state over it (ZeRO-3 / FSDP: Rajbhandari
et al. 2020), while the batch is split over every mesh axis.
"""
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from genjax.core import check_int

PyTree = Any

_RNG_STREAM, _DATA_STREAM = 0, 1


class TrainState(NamedTuple):
    step: jax.Array  # int32 scalar: number of train steps (update rounds) done so far
    params: PyTree  # a dict of parameter groups for families with several players
    ema_params: PyTree
    opt_state: PyTree  # a dict {group: optimizer state} when params are grouped
    run_key: jax.Array  # all randomness of the run derives from this key
    # State that is not optimized (a replay buffer, BatchNorm statistics, spectral-norm
    # vectors, an EMA codebook): threaded through the loss, checkpointed, vmapped and
    # sharded with the rest, never differentiated, decayed or EMA-averaged.
    model_state: PyTree = None


def step_key(state: TrainState) -> jax.Array:
    """The RNG of the current step: a function of (run key, step) only."""
    return jax.random.fold_in(jax.random.fold_in(state.run_key, _RNG_STREAM), state.step)


def data_key(state: TrainState) -> jax.Array:
    """The key that, with the step, fixes the data order of the run."""
    return jax.random.fold_in(state.run_key, _DATA_STREAM)


# ----------------------------------------------------------------------------- optimizer

SCHEDULES = ("cosine", "linear", "constant")


def lr_multiplier(*, warmup_steps: int, total_steps: int, schedule: str = "cosine",
                  end_fraction: float = 0.0) -> optax.Schedule:
    """Schedule in [0, 1] that multiplies the peak learning rate: linear warmup, then
    cosine decay to `end_fraction` (Loshchilov & Hutter 2017), linear decay, or constant."""
    if schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, 1.0, warmup_steps, max(total_steps, warmup_steps + 1), end_fraction)
    if schedule == "linear":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, 1.0, warmup_steps),
             optax.linear_schedule(1.0, end_fraction, max(total_steps - warmup_steps, 1))],
            [warmup_steps])
    if schedule == "constant":
        return optax.linear_schedule(0.0, 1.0, warmup_steps) if warmup_steps else optax.constant_schedule(1.0)
    raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")


def make_optimizer(
    *,
    learning_rate: float,
    total_steps: int,
    warmup_steps: int = 0,
    schedule: str = "cosine",
    end_fraction: float = 0.0,
    grad_clip: float | None = 1.0,
    weight_decay: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> tuple[optax.GradientTransformation, Callable]:
    """AdamW with global-norm clipping and a scheduled learning rate.

    The peak learning rate and the other AdamW constants are injected
    hyperparameters (`optax.inject_hyperparams`): they live in the optimizer state,
    so ensemble members can hold different values (see `set_hyperparams`).

    Returns (transformation, learning_rate_fn) where learning_rate_fn(opt_state)
    is the learning rate the next update will use.
    """
    adamw = optax.inject_hyperparams(optax.adamw)(
        learning_rate=learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    multiplier = lr_multiplier(warmup_steps=warmup_steps, total_steps=total_steps,
                               schedule=schedule, end_fraction=end_fraction)
    clip = optax.clip_by_global_norm(grad_clip) if grad_clip else optax.identity()
    tx = optax.chain(clip, adamw, optax.scale_by_schedule(multiplier))

    def learning_rate_fn(opt_state):
        return opt_state[1].hyperparams["learning_rate"] * multiplier(opt_state[2].count)

    return tx, learning_rate_fn


def _is_injected(node) -> bool:
    return hasattr(node, "hyperparams") and isinstance(getattr(node, "hyperparams"), dict)


def _injected(opt_state) -> dict:
    found = {}
    for node in jax.tree_util.tree_leaves(opt_state, is_leaf=_is_injected):
        if _is_injected(node):
            found.update(node.hyperparams)
    return found


def _groups_of(opt_state) -> dict | None:
    """{group: state} for the optimizer state of grouped parameters (a plain dict at
    the top, which optax's own states never are), else None."""
    return opt_state if isinstance(opt_state, Mapping) else None


def get_hyperparams(opt_state) -> dict:
    """The injected hyperparameters of an optimizer state (merged over injections);
    named "group.name" when the parameters are grouped."""
    groups = _groups_of(opt_state)
    if groups is None:
        return _injected(opt_state)
    return {f"{g}.{name}": v for g, s in groups.items() for name, v in _injected(s).items()}


def set_hyperparams(opt_state, **values):
    """A copy of `opt_state` with injected hyperparameters replaced ("group.name" for
    grouped parameters); unknown names raise a ValueError listing the valid ones."""
    valid = get_hyperparams(opt_state)
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ValueError(f"unknown optimizer hyperparameter(s) {unknown}; valid: {sorted(valid)}")
    groups = _groups_of(opt_state)
    if groups is not None:
        return {g: _set_injected(s, {name.split(".", 1)[1]: v for name, v in values.items()
                                     if name.split(".", 1)[0] == g})
                for g, s in groups.items()}
    return _set_injected(opt_state, values)


def _set_injected(opt_state, values: dict):
    def replace(node):
        if not _is_injected(node):
            return node
        hp = dict(node.hyperparams)
        for name, value in values.items():
            if name in hp:
                hp[name] = jnp.asarray(value, dtype=hp[name].dtype)
        return node._replace(hyperparams=hp)

    return jax.tree_util.tree_map(replace, opt_state, is_leaf=_is_injected)


# ----------------------------------------------------------------------------- state

def update_rounds(loss_fn, update_schedule=None) -> tuple[tuple[str | None, int], ...]:
    """The updates of one train step as ((group, count), ...): ((None, 1),) for one
    loss over all parameters; for a dict of per-group losses, `update_schedule`
    (default: each group once, in the dict's order), checked against the groups."""
    if not isinstance(loss_fn, Mapping):
        if update_schedule is not None:
            raise ValueError("update_schedule needs parameter groups (loss_fn a dict {group: loss})")
        return ((None, 1),)
    schedule = tuple(update_schedule) if update_schedule is not None else tuple((g, 1) for g in loss_fn)
    for entry in schedule:
        if not (isinstance(entry, tuple) and len(entry) == 2):
            raise ValueError(f"update_schedule entry {entry!r}; expected (group, count)")
        group, count = entry
        if group not in loss_fn:
            raise ValueError(f"update_schedule names group {group!r}; valid groups: {sorted(loss_fn)}")
        check_int(f"update count of group {group!r}", count, minimum=1)
    unscheduled = sorted(set(loss_fn) - {g for g, _ in schedule})
    if unscheduled:
        raise ValueError(f"groups {unscheduled} have a loss but no place in update_schedule {schedule}")
    return schedule


def _check_group_dict(what: str, value, groups) -> None:
    if not isinstance(value, Mapping) or set(value) != set(groups):
        got = sorted(value) if isinstance(value, Mapping) else type(value).__name__
        raise ValueError(f"{what} must be a dict with one entry per parameter group {sorted(groups)}; got {got}")


def init_state(init_fn: Callable, optimizer, key, example_batch, *,
               init_model_state: Callable | None = None, **hyperparams) -> TrainState:
    """Initial state: params from `init_fn(key, batch)`, EMA = params, step 0, and
    model state from `init_model_state(key, batch)` when the family has one.

    `optimizer` is one transformation, or a dict {group: transformation} for a
    family whose params are a dict of parameter groups (each group's optimizer
    state is then kept apart). `hyperparams` override injected optimizer
    hyperparameters: `learning_rate=...`, or "group.learning_rate" for a group.
    """
    init_key, run_key = jax.random.split(key)
    params = init_fn(init_key, example_batch)
    if isinstance(optimizer, Mapping):
        if not isinstance(params, Mapping) or set(params) != set(optimizer):
            got = sorted(params) if isinstance(params, Mapping) else type(params).__name__
            raise ValueError(f"params must be a dict of the parameter groups {sorted(optimizer)}; got {got}")
        opt_state = {g: optimizer[g].init(params[g]) for g in optimizer}
    else:
        opt_state = optimizer.init(params)
    if hyperparams:
        opt_state = set_hyperparams(opt_state, **hyperparams)
    ema_params = jax.tree_util.tree_map(jnp.copy, params)  # a distinct buffer, so both can be donated
    model_state = None
    if init_model_state is not None:
        model_state = init_model_state(jax.random.fold_in(init_key, 1), example_batch)
    return TrainState(jnp.zeros((), jnp.int32), params, ema_params, opt_state, run_key, model_state)


def init_ensemble(init_fn: Callable, optimizer, keys, example_batch, *,
                  init_model_state: Callable | None = None, **hyperparams) -> TrainState:
    """K stacked states (leading axis K), member k from keys[k] and hyperparams[name][k].

    Member k is exactly `init_state(init_fn, optimizer, keys[k], batch, name=values[k])`.
    """
    keys = jnp.asarray(keys)
    num = keys.shape[0]
    for name, values in hyperparams.items():
        if np.shape(values) != (num,):
            raise ValueError(f"hyperparameter {name!r} has shape {np.shape(values)}; expected ({num},), one per member")
    stacked = {k: jnp.asarray(v, jnp.float32) for k, v in hyperparams.items()}
    return jax.vmap(lambda key, hp: init_state(init_fn, optimizer, key, example_batch,
                                               init_model_state=init_model_state, **hp))(keys, stacked)


# ----------------------------------------------------------------------------- steps

def default_mesh(devices: Sequence | None = None) -> Mesh:
    """A 1-D mesh with a `data` axis over all (or the given) devices."""
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Auto,), devices=devices)


def fsdp_mesh(fsdp: int, devices: Sequence | None = None) -> Mesh:
    """A 2-D mesh ("data", "fsdp") over all (or the given) devices, `fsdp` of them
    along the parameter-sharding axis and the rest along `data`."""
    devices = list(jax.devices() if devices is None else devices)
    if fsdp < 1 or len(devices) % fsdp:
        raise ValueError(f"fsdp={fsdp} does not divide the {len(devices)} devices")
    return jax.make_mesh((len(devices) // fsdp, fsdp), ("data", "fsdp"),
                         axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def _batch_axes(mesh: Mesh):
    """The mesh axes the batch is split over: every one of `data` and `fsdp` present."""
    return tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)


def shard_batch(batch, mesh: Mesh | None, *, axis: int = 0):
    """Constrains every leaf's batch axis (`axis`) to the mesh's `data` (and `fsdp`)
    axes (in a jit)."""
    if mesh is None:
        return batch
    spec = P(*([None] * axis), _batch_axes(mesh))
    sharding = NamedSharding(mesh, spec)
    return jax.tree_util.tree_map(lambda leaf: jax.lax.with_sharding_constraint(leaf, sharding), batch)


def fsdp_spec(shape: Sequence[int], num_shards: int, axis: str = "fsdp") -> P:
    """PartitionSpec sharding the largest dimension of `shape` divisible by
    `num_shards` over `axis` (ties: the first); replicated if none divides."""
    best = None
    for d, size in enumerate(shape):
        if size % num_shards == 0 and size >= num_shards and (best is None or size > shape[best]):
            best = d
    if best is None:
        return P()
    return P(*[axis if d == best else None for d in range(len(shape))])


def fsdp_shardings(tree: PyTree, mesh: Mesh, axis: str = "fsdp") -> PyTree:
    """NamedShardings for every leaf of `tree` (arrays or ShapeDtypeStructs): each
    leaf's largest dimension divisible by the size of mesh axis `axis` is split over
    it, the rest (scalars, RNG keys, odd sizes) replicated. Applied to a whole
    TrainState it shards params, EMA and the optimizer moments alike, since the
    moments have the parameters' shapes."""
    if axis not in mesh.axis_names:
        raise ValueError(f"mesh axes {mesh.axis_names} have no {axis!r} axis")
    n = mesh.shape[axis]

    def one(leaf):
        shape = getattr(leaf, "shape", ())
        if jax.dtypes.issubdtype(getattr(leaf, "dtype", np.float32), jax.dtypes.prng_key):
            return NamedSharding(mesh, P())
        return NamedSharding(mesh, fsdp_spec(shape, n, axis))

    return jax.tree_util.tree_map(one, tree)


def shard_state(state: PyTree, mesh: Mesh, axis: str = "fsdp") -> PyTree:
    """`state` placed on the mesh with `fsdp_shardings` (outside a jit)."""
    return jax.device_put(state, fsdp_shardings(state, mesh, axis))


def _constrain(tree, mesh: Mesh | None):
    """Inside a jit: keep `tree` FSDP-sharded when the mesh has an `fsdp` axis."""
    if mesh is None or "fsdp" not in mesh.axis_names:
        return tree
    return jax.lax.with_sharding_constraint(tree, fsdp_shardings(tree, mesh))


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops_per_s: float) -> float:
    """Model FLOPs utilisation (Chowdhery et al. 2022, "PaLM", App. B): achieved
    model FLOP/s over the device's peak, tokens_per_s * flops_per_token / peak.

    flops_per_token is the model's training cost per token (e.g.
    `Transformer.flops_per_token`: 6N + attention); peak_flops_per_s is measured
    (`genjax.hardware.measure_peak_flops`) or the vendor's number for the dtype used.
    """
    if not peak_flops_per_s > 0:
        raise ValueError(f"peak_flops_per_s={peak_flops_per_s}; expected a positive FLOP/s figure")
    return tokens_per_s * flops_per_token / peak_flops_per_s


def _value_and_group_grad(loss_fn: Callable, group: str | None) -> Callable:
    """(params, key, batch, model_state) -> ((loss, (metrics, model_state)), grads of
    `group`'s parameters); group None differentiates the whole tree. A stateless
    loss (model_state None) is called as loss_fn(params, key, batch)."""

    def loss_of_group(group_params, params, key, batch, model_state):
        full = group_params if group is None else {**params, group: group_params}
        if model_state is None:
            loss, metrics = loss_fn(full, key, batch)
            return loss, (metrics, None)
        return loss_fn(full, key, batch, model_state)

    grad_fn = jax.value_and_grad(loss_of_group, has_aux=True)

    def value_and_grad(params, key, batch, model_state):
        group_params = params if group is None else params[group]
        return grad_fn(group_params, params, key, batch, model_state)

    return value_and_grad


def make_train_fn(
    loss_fn: Callable | Mapping[str, Callable],
    optimizer: optax.GradientTransformation | Mapping[str, optax.GradientTransformation],
    *,
    ema_decay: float = 0.999,
    steps_per_call: int = 1,
    batch_fn: Callable | None = None,
    mesh: Mesh | None = None,
    learning_rate_fn: Callable | Mapping[str, Callable] | None = None,
    unroll: int | bool = 1,
    grad_accum_steps: int = 1,
    update_schedule: Sequence[tuple[str, int]] | None = None,
    ema_groups: Sequence[str] | None = None,
    ema_warmup: bool = True,
) -> Callable:
    """Returns train_fn(state, batches=None) -> (state, metrics), pure and jittable.

    Runs `steps_per_call` steps in a `lax.scan`. The batch of each update comes
    from `batch_fn(data_key, index)` (generated on device; batches=None) or from
    `batches`, a pytree with a leading axis of length steps_per_call.
    `unroll` is passed to the scan; True traces the steps one after another into
    straight-line code with no loop at all (see `host_loop`).
    Metrics are stacked over the steps: the loss's own metrics plus `loss`,
    `grad_norm`, (given learning_rate_fn) `learning_rate` and `params_finite`:
    booleans, True but at the last step, where it says whether every parameter
    the call leaves is finite (`all_finite`; a bool, so the metrics log skips
    it). With `loss` and the `grad_norm`s it is a signal of the run loop's
    divergence guard. It is checked once per call, not per step, because one
    more pass over the parameters costs up to a fifth of a step whose time is
    spent in the optimizer update (an MLP at batch 8 on a CPU,
    benchmarks/guard_overhead.py); a non-finite parameter earlier in the call
    shows in the next step's loss, or at the end of the call.

    Parameter groups (`docs/protocol.md`): with `loss_fn` a dict {group: loss} and
    `optimizer` a dict {group: transformation}, params is a dict with those groups
    as its top-level keys and each loss is differentiated with respect to its own
    group only, updated by its own optimizer (own clipping, moments, schedule).
    A step is one round of `update_schedule`, e.g. (("critic", 5), ("generator",
    1)): U = 6 updates in that order, each seeing the parameters the one before
    left. Update j of step s has the key fold_in(step key, j) and the batch
    batch_fn(data_key, s * U + j) (host-fed `batches` then have shape
    (steps_per_call, U, ...)); with U = 1 these are the single-loss key and batch.
    The decay of the EMA of the parameters warms up (`ema_warmup`, see
    `ema_decay_at`): the first update takes the parameters themselves and a short
    run's EMA spans a fixed fraction of its steps, so it is not pulled toward the
    initialisation. The EMA is kept for `ema_groups` (default:
    every group); the other groups'
    `ema_params` are copies of their parameters, so `sample(ema_params, ...)`
    needs no special case. Metrics of group g are named "g/loss", "g/grad_norm",
    "g/learning_rate", "g/<metric>" (means over g's updates in the round); "loss"
    is the sum of the groups' losses and "grad_norm" the norm of all their last
    gradients together: signals for the divergence guard, not objectives.

    Model state (`TrainState.model_state`, not None): the loss is called as
    loss(params, key, batch, model_state) -> (scalar, (metrics, new model_state))
    and the state it returns is carried to the next update (and from micro-batch
    to micro-batch under accumulation). It is never differentiated, decayed or
    averaged.

    grad_accum_steps = A > 1: every leaf of an update's batch (leading size B, a
    multiple of A) is split into A micro-batches of B / A rows, taken with stride
    A (rows i, i + A, ...) so that each stays spread over the `data` axis; the
    update uses the mean of their gradients, and the loss and metrics are means
    over them too. For a loss that is a mean over examples this equals the
    full-batch step at 1/A of the activation memory; micro-batch i gets the key
    fold_in(update key, i), so losses that draw randomness differ from the full
    batch in their draws only. The micro-batches run in a `lax.scan`, or one
    after another in straight-line code when unroll is True.

    A mesh with an `fsdp` axis (`fsdp_mesh`) keeps params, EMA, gradients,
    optimizer and model state sharded by `fsdp_shardings`; place the initial
    state with `shard_state`.
    """
    if not (isinstance(grad_accum_steps, (int, np.integer)) and grad_accum_steps >= 1):
        raise ValueError(f"grad_accum_steps={grad_accum_steps!r}; expected a positive integer")
    updates = update_rounds(loss_fn, update_schedule)
    grouped = isinstance(loss_fn, Mapping)
    if grouped:
        _check_group_dict("optimizer", optimizer, loss_fn)
        if learning_rate_fn is not None:
            _check_group_dict("learning_rate_fn", learning_rate_fn, loss_fn)
        for g in ema_groups or ():
            if g not in loss_fn:
                raise ValueError(f"ema group {g!r} is not a parameter group; valid groups: {sorted(loss_fn)}")
    elif ema_groups is not None:
        raise ValueError("ema_groups needs parameter groups (loss_fn a dict {group: loss})")
    num_updates = sum(count for _, count in updates)
    grad_fns = {group: _value_and_group_grad(loss_fn[group] if grouped else loss_fn, group)
                for group, _ in updates}

    def accumulated(group, params, key, batch, model_state):
        A = grad_accum_steps
        grad_fn = grad_fns[group]

        def split(leaf):
            if leaf.shape[0] % A:
                raise ValueError(
                    f"batch leaf of shape {leaf.shape} does not split into grad_accum_steps={A} "
                    f"micro-batches; expected a leading size divisible by {A}")
            # (B, ...) -> (A, B / A, ...) with micro-batch i = rows i, i + A, ...
            return jnp.swapaxes(leaf.reshape(leaf.shape[0] // A, A, *leaf.shape[1:]), 0, 1)

        micro = jax.tree_util.tree_map(split, batch)
        micro = shard_batch(micro, mesh, axis=1)

        def one(i, mb, model_state):
            (loss, (metrics, model_state)), grads = grad_fn(params, jax.random.fold_in(key, i), mb, model_state)
            return (loss, metrics), _constrain(grads, mesh), model_state

        if unroll is True:
            outs = []
            for i in range(A):
                (loss, metrics), grads, model_state = one(i, jax.tree_util.tree_map(lambda x: x[i], micro),
                                                          model_state)
                outs.append(((loss, metrics), grads))
            (losses, metrics), grads = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *outs)
            grads = jax.tree_util.tree_map(lambda g: jnp.mean(g, axis=0), grads)
        else:
            def body(carry, xs):
                acc, model_state = carry
                i, mb = xs
                (loss, metrics), grads, model_state = one(i, mb, model_state)
                acc = jax.tree_util.tree_map(lambda a, g: a + g / A, acc, grads)
                return (acc, model_state), (loss, metrics)

            zeros = jax.tree_util.tree_map(jnp.zeros_like, params if group is None else params[group])
            (grads, model_state), (losses, metrics) = jax.lax.scan(
                body, (zeros, model_state), (jnp.arange(A), micro))
        mean = lambda x: jnp.mean(x, axis=0)  # noqa: E731
        return (mean(losses), jax.tree_util.tree_map(mean, metrics)), grads, model_state

    def one_update(group, state: TrainState, key, batch):
        """One optimizer update of `group` (None: all parameters)."""
        if grad_accum_steps == 1:
            batch = shard_batch(batch, mesh)
            (loss, (metrics, model_state)), grads = grad_fns[group](
                state.params, key, batch, state.model_state)
        else:
            (loss, metrics), grads, model_state = accumulated(group, state.params, key, batch, state.model_state)
        grads = _constrain(grads, mesh)
        if group is None:
            new, opt_state = _apply(optimizer, grads, state.opt_state, state.params)
            params = new
        else:
            new, group_opt = _apply(optimizer[group], grads, state.opt_state[group], state.params[group])
            params, opt_state = {**state.params, group: new}, {**state.opt_state, group: group_opt}
        params, opt_state, model_state = _constrain((params, opt_state, model_state), mesh)
        metrics = dict(metrics)
        metrics["loss"] = loss
        metrics["grad_norm"] = optax.tree.norm(grads)
        lr_fn = learning_rate_fn if group is None or learning_rate_fn is None else learning_rate_fn[group]
        if lr_fn is not None:
            metrics["learning_rate"] = lr_fn(state.opt_state if group is None else state.opt_state[group])
        return state._replace(params=params, opt_state=opt_state, model_state=model_state), metrics

    def repeated_updates(group, count, first, state, key, batches):
        """`count` updates of `group`, update i (of the round) = first + i; metrics
        are means over them."""
        def body(state, i):
            batch = batches(first + i)
            return one_update(group, state, jax.random.fold_in(key, first + i), batch)

        if count == 1:
            return body(state, 0)
        if unroll is True:
            collected = []
            for i in range(count):
                state, metrics = body(state, i)
                collected.append(metrics)
            metrics = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *collected)
        else:
            state, metrics = jax.lax.scan(body, state, jnp.arange(count))
        return state, jax.tree_util.tree_map(lambda x: jnp.mean(x, axis=0), metrics)

    def one_step(state: TrainState, batch_of):
        key = step_key(state)
        if not grouped:  # one loss over all parameters: the key and batch of the step itself
            new_state, metrics = one_update(None, state, key, batch_of(0))
        else:
            new_state, metrics, first = state, {}, 0
            losses, norms = [], []
            for group, count in updates:
                new_state, group_metrics = repeated_updates(group, count, first, new_state, key, batch_of)
                first += count
                losses.append(group_metrics["loss"])
                norms.append(group_metrics["grad_norm"])
                metrics.update({f"{group}/{name}": value for name, value in group_metrics.items()})
            metrics["loss"] = sum(losses)
            metrics["grad_norm"] = jnp.sqrt(sum(n**2 for n in norms))
        decay = ema_decay_at(ema_decay, state.step + 1) if ema_warmup else ema_decay
        ema = _ema(state.ema_params, new_state.params, decay, ema_groups if grouped else None)
        ema = _constrain(ema, mesh)
        return new_state._replace(step=state.step + 1, ema_params=ema), metrics

    def train_fn(state: TrainState, batches=None):
        def body(state, step_batches):
            if batch_fn is not None:
                index0 = state.step * num_updates
                batch_of = lambda j: batch_fn(data_key(state), index0 + j)  # noqa: E731
            elif num_updates == 1:
                batch_of = lambda j: step_batches  # noqa: E731
            else:
                batch_of = lambda j: jax.tree_util.tree_map(lambda b: b[j], step_batches)  # noqa: E731
            return one_step(state, batch_of)

        if batch_fn is None and batches is None:
            raise ValueError("train_fn needs `batches` when no batch_fn was given")
        if unroll is True:  # straight-line code: a Python loop traced step by step
            collected = []
            for i in range(steps_per_call):
                batch = None if batches is None else jax.tree_util.tree_map(lambda b: b[i], batches)
                state, metrics = body(state, batch)
                collected.append(metrics)
            metrics = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *collected)
        else:
            state, metrics = jax.lax.scan(body, state, batches, length=steps_per_call, unroll=unroll)
        finite = jnp.ones((steps_per_call,), bool).at[-1].set(all_finite(state.params))
        return state, {**metrics, "params_finite": finite}

    return train_fn


def all_finite(tree) -> jax.Array:
    """A boolean scalar: every floating-point leaf of `tree` is finite.

    The divergence guard's parameter check, computed inside the compiled train
    call so that the host reads one flag instead of copying the parameters."""
    flags = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)
             if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


def _apply(optimizer, grads, opt_state, params):
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


# gamma of the power-function EMA profile (Karras et al. 2024, "Analyzing and Improving
# the Training Dynamics of Diffusion Models", Sec. 3.1): sigma_rel = 0.05, an average
# over roughly the last 1 / (gamma + 1) ~ 5.6% of the steps done.
EMA_WARMUP_GAMMA = 16.97


def ema_decay_at(decay, t, gamma: float = EMA_WARMUP_GAMMA):
    """The decay of the t-th update (t >= 1) of an EMA whose decay warms up.

    min(decay, (1 - 1/t)^(gamma + 1)): the power-function profile beta_gamma(t) of
    Karras et al. 2024, capped at the configured decay. The first update
    has decay 0, so the average starts at the trained parameters, not at the
    initialisation (for a constant sequence it is that constant from step 1); while
    t < (gamma + 1) / (1 - decay) the average spans a fixed fraction of the run
    (about t / (gamma + 1) steps), after that the configured 1 / (1 - decay) steps.
    A plain EMA at 0.999 after 100 steps is still 90% the initial weights."""
    decay = jnp.asarray(decay, jnp.float32)
    warm = (1.0 - 1.0 / jnp.maximum(jnp.asarray(t, jnp.float32), 1.0)) ** (gamma + 1.0)
    return jnp.minimum(decay, warm)


def _ema(ema_params, params, decay, ema_groups):
    """EMA of the parameters (Polyak & Juditsky 1992); groups outside `ema_groups`
    (when given) track their parameters exactly."""
    average = lambda e, p: jax.tree_util.tree_map(lambda a, b: decay * a + (1.0 - decay) * b, e, p)  # noqa: E731
    if ema_groups is None:
        return average(ema_params, params)
    return {g: average(ema_params[g], params[g]) if g in ema_groups else params[g] for g in params}


def host_loop(step_fn: Callable, num_calls: int, step_axis: int = 0) -> Callable:
    """Calls a jitted `step_fn(state) -> (state, metrics)` num_calls times from Python
    and concatenates the metrics along their step axis (1 for an ensemble's
    (members, steps) metrics).

    The same steps as one `lax.scan`, for backends where a loop inside the compiled
    program is slow: on XLA:CPU, convolution gradients inside a while loop run about
    25 times slower than the same gradients in straight-line code (a U-Net step on
    8x8 digits: 6 s in a scan against 0.24 s alone). Build step_fn with
    `make_train_fn(..., steps_per_call=1, unroll=True)`.
    """

    def run(state):
        collected = []
        for _ in range(num_calls):
            state, metrics = step_fn(state)
            collected.append(metrics)
        return state, jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs, axis=step_axis), *collected)

    return run


def first_nonfinite(losses, start_step: int) -> int | None:
    """The step number of the first non-finite loss in a host array, or None."""
    bad = np.flatnonzero(~np.isfinite(np.asarray(losses)))
    return None if bad.size == 0 else start_step + int(bad[0])


# ----------------------------------------------------------------------------- ensembles

ENSEMBLE_STRATEGIES = ("vmap", "map", "loop")


def make_ensemble_fn(train_fn: Callable, strategy: str = "vmap") -> Callable:
    """Runs `train_fn` on every member of a stacked state (leading axis K).

    vmap: one program, members batched (best on accelerators).
    map:  one program, members in sequence (`lax.map`).
    loop: one compiled single-member program called K times from Python.
    All three give the same result; which is fastest depends on the backend
    (see benchmarks/ensemble.py and `experiments.ensemble.ensemble_runner`).
    """
    if strategy == "vmap":
        return jax.jit(jax.vmap(train_fn))
    if strategy == "map":
        return jax.jit(lambda states: jax.lax.map(train_fn, states))
    if strategy == "loop":
        one = jax.jit(train_fn)

        def run(states):
            num = jax.tree_util.tree_leaves(states)[0].shape[0]
            outs = [one(jax.tree_util.tree_map(lambda leaf: leaf[k], states)) for k in range(num)]
            return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *outs)

        return run
    raise ValueError(f"unknown ensemble strategy {strategy!r}; expected one of {ENSEMBLE_STRATEGIES}")
