"""FSDP: parameters, EMA and optimizer state sharded over an `fsdp` mesh axis train
exactly like the unsharded model (on the 8 host devices tests/conftest.py forces)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from genjax import train
from genjax.autoregressive import make_lm


def test_fsdp_spec_shards_the_largest_divisible_dimension():
    assert train.fsdp_spec((256, 768), 4) == P(None, "fsdp")
    assert train.fsdp_spec((768, 256), 4) == P("fsdp", None)
    assert train.fsdp_spec((6, 8), 4) == P(None, "fsdp")  # 6 is larger but not divisible
    assert train.fsdp_spec((8, 8), 4) == P("fsdp", None)  # ties: the first
    assert train.fsdp_spec((3, 5), 4) == P()  # nothing divides: replicated
    assert train.fsdp_spec((), 4) == P()
    assert train.fsdp_spec((2,), 4) == P()  # smaller than the axis


def test_fsdp_training_equals_unsharded_training(eight_devices):
    lm = make_lm(vocab_size=16, num_layers=1, d_model=16, num_heads=2, max_len=8)
    # AdamW with eps = 1e-3: the update g / (sqrt(v) + eps) then changes by at most
    # lr / eps times a gradient difference, so float rounding from the sharded sums
    # (~1e-8 on gradients of ~1e-2) stays far below the tolerance; with eps = 1e-8
    # entries whose gradient is itself at rounding level could flip sign.
    tx, _ = train.make_optimizer(learning_rate=1e-2, total_steps=10, warmup_steps=1, eps=1e-3)
    tokens = jax.random.randint(jax.random.key(1), (2, 1, 8, 9), 0, 16)  # 2 steps of batch 8
    state0 = train.init_state(lm.init, tx, jax.random.key(2), {"tokens": tokens[0, 0]})

    def run(fn, state):
        losses = []
        for batch in tokens:
            state, metrics = fn(state, {"tokens": batch})
            losses.append(metrics["loss"][0])
        return state, np.array(losses)

    want, want_losses = run(jax.jit(train.make_train_fn(lm.loss, tx, unroll=True)), state0)

    mesh = train.fsdp_mesh(4, eight_devices)  # data 2 x fsdp 4
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4}
    sharded0 = train.shard_state(state0, mesh)
    fn = jax.jit(train.make_train_fn(lm.loss, tx, mesh=mesh, grad_accum_steps=2, unroll=True))
    got, got_losses = run(fn, sharded0)

    np.testing.assert_allclose(got_losses, want_losses, rtol=1e-5)
    for x, y in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            continue
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)

    # The (16, 3, 2, 8) qkv kernel splits its 16-row input dimension four ways, in
    # the parameters, the EMA and both Adam moments, before and after the step.
    qkv = lambda tree: tree["block_0"]["attn"]["qkv"]["kernel"]  # noqa: E731
    adam = got.opt_state[1].inner_state[0]
    for leaf in (qkv(sharded0.params), qkv(got.params), qkv(got.ema_params), qkv(adam.mu), qkv(adam.nu)):
        assert tuple(leaf.sharding.spec)[:1] == ("fsdp",) and not any(tuple(leaf.sharding.spec)[1:])
        assert leaf.addressable_shards[0].data.shape == (4, 3, 2, 8)


def test_fsdp_errors_name_the_problem(eight_devices):
    with pytest.raises(ValueError, match="fsdp=3 does not divide the 8 devices"):
        train.fsdp_mesh(3, eight_devices)
    with pytest.raises(ValueError, match=r"mesh axes \('data',\) have no 'fsdp' axis"):
        train.fsdp_shardings({"w": jnp.zeros(4)}, train.default_mesh())


def test_the_driver_trains_fsdp_sharded_from_the_config_switch(tmp_path, eight_devices):
    """train.fsdp = 4 in a config: experiments.main shards the state data 2 x fsdp 4,
    checkpoints and resumes it, and logs the losses of the unsharded run."""
    from experiments import main
    from experiments.logging import read_metrics
    from tests import lm_testing

    (tmp_path / "lib").mkdir()
    lm_testing.fake_stdlib(tmp_path / "lib")

    def run(fsdp, workdir, stop_after=None):
        config = lm_testing.tiny_config(str(tmp_path / "lib"))
        config.train.fsdp = fsdp
        config.train.steps_per_call = 10
        config.train.checkpoint_every = 10
        return main.train(config, str(tmp_path / workdir), progress=False, stop_after=stop_after)

    def losses(workdir):
        return np.array([r["loss"] for r in read_metrics(str(tmp_path / workdir / "metrics.jsonl")) if "loss" in r])

    run(1, "plain")
    run(4, "fsdp", stop_after=20)  # interrupted, then resumed from its checkpoint
    sharded = run(4, "fsdp")
    # Sharded sums round differently from unsharded ones (float32 noise only).
    np.testing.assert_allclose(losses("fsdp"), losses("plain"), rtol=1e-4)
    kernel = sharded.params["block_0"]["attn"]["qkv"]["kernel"]  # (32, 3, 2, 16)
    assert tuple(kernel.sharding.spec)[:1] == ("fsdp",)
    assert kernel.addressable_shards[0].data.shape == (8, 3, 2, 16)
    with pytest.raises(ValueError, match="fsdp=3 does not divide the 8 devices"):
        main.place_state(sharded, 3)
    with pytest.raises(ValueError, match=r"train.fsdp=0; expected a positive int"):
        main.place_state(sharded, 0)
