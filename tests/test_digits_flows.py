"""The flow families on the 8x8 digits: multi-scale Glow on images in [-1, 1] (its
log-density includes every pre-processing log-det, so its NLL is in the diffusion
convention), shape errors, and tiny end-to-end runs of the digits flow configs
(unconditional flow matching, Glow, class-conditional flow matching with a guidance
sweep)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits_flow_matching, digits_fm_cfg, digits_glow
from experiments import guidance_sweep, main, registry
from flow_testing import jacobian_log_dets, perturb
from genjax.flows import realnvp

SMALL = dict(data_shape=(4, 4, 1), num_scales=2, steps_per_scale=1, hidden=(4,), logit_alpha=0.05)


def test_glow_on_minus_one_one_inverts_and_log_det_is_the_full_jacobian():
    bijection = realnvp.glow_bijection(**SMALL, data_range=(-1.0, 1.0))
    unit = realnvp.glow_bijection(**SMALL)  # the same flow for data in [0, 1]
    y = jax.random.uniform(jax.random.PRNGKey(0), (3, 4, 4, 1), minval=-0.98, maxval=0.98)
    fwd_method, inv_method = type(bijection).forward_and_log_det, type(bijection).inverse_and_log_det
    # Rescaling has no parameters, so both flows share one parameter tree.
    init = jax.jit(lambda k, y: perturb(bijection.init(k, y, method=fwd_method), jax.random.PRNGKey(2), 0.3))
    params = init(jax.random.PRNGKey(1), y)

    @jax.jit
    def run(params, y):
        fwd = lambda v: bijection.apply(params, v, method=fwd_method)
        z, ld = fwd(y)
        y_back, ld_inv = bijection.apply(params, z, method=inv_method)
        _, ld_unit = unit.apply(params, (y + 1.0) / 2.0, method=fwd_method)
        return z, ld, y_back, ld_inv, ld_unit, jacobian_log_dets(lambda v: fwd(v)[0], y)

    z, ld, y_back, ld_inv, ld_unit, slog = run(params, y)
    assert z.shape == (3, 16)
    np.testing.assert_allclose(y_back, y, atol=1e-4)
    np.testing.assert_allclose(ld_inv, -ld, rtol=1e-5, atol=1e-3)
    # log|det| of the whole map (rescale, logit, squeezes, steps) against the dense Jacobian.
    np.testing.assert_allclose(ld, slog, rtol=1e-5, atol=1e-3)
    # y -> (y + 1) / 2 contributes exactly -D log 2 (a missing term is off by 11 nats).
    np.testing.assert_allclose(ld, ld_unit - 16 * math.log(2.0), rtol=1e-6, atol=1e-3)


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="set logit_alpha"):
        realnvp.glow_bijection(**{**SMALL, "logit_alpha": None}, data_range=(-1.0, 1.0))
    with pytest.raises(ValueError, match="low < high"):
        realnvp.UnitInterval((4,), 1.0, -1.0)
    # The shape is checked before any parameter is read.
    for get_config in (digits_glow.get_config, digits_flow_matching.get_config):
        config = get_config()
        model = registry.build_model(config, registry.build_source(config))
        for bad in (jnp.zeros((4, 8, 8)), jnp.zeros((4, 8, 8, 3)), jnp.zeros((4, 64))):
            with pytest.raises(ValueError, match=r"\(8, 8, 1\).*" + re_shape(bad.shape)):
                model.log_prob(None, jax.random.PRNGKey(0), bad)
            with pytest.raises(ValueError, match=r"\(8, 8, 1\)"):
                model.init(jax.random.PRNGKey(0), bad)


def re_shape(shape):
    return "\\(" + ", ".join(str(d) for d in shape) + "\\)"


def tiny(get_config):
    c = get_config()
    c.data.batch_size = 16
    c.train.num_steps = 20
    c.train.steps_per_call = 10
    c.train.checkpoint_every = 10
    c.sample.num = 20
    c.eval.num = 8
    if c.family == "glow":
        c.model.steps_per_scale = 2
        c.model.hidden = (8,)
    else:
        c.optim.ema_decay = 0.0  # evaluate the trained weights (the EMA of 20 steps is the zero init)
        c.model.channels = (8, 16)
        c.sample.method = "euler"
        c.sample.num_steps = 4
        c.eval.rtol = c.eval.atol = 1e-3  # plumbing, not accuracy
    return c


UNIFORM_NLL = 64 * math.log(17)  # nats per image of the uniform distribution on 17^64 images


@pytest.mark.slow
@pytest.mark.parametrize("get_config", [digits_glow.get_config, digits_flow_matching.get_config,
                                        digits_fm_cfg.get_config])
def test_digits_flow_config_runs_end_to_end(get_config, tmp_path):
    config, wd = tiny(get_config), str(tmp_path)
    state = main.train(config, wd, progress=False)
    assert int(state.step) == 20
    samples = main.sample(config, wd)
    assert samples.shape == (20, 8, 8, 1) and np.all(np.isfinite(samples))
    result = main.evaluate(config, wd)
    # A valid bound on -log P of discrete images is positive; bits/dim is nats / (64 ln 2).
    assert result["num_eval"] == 8 and 0 < result["nll_nats"]
    np.testing.assert_allclose(result["bits_per_dim"], result["nll_nats"] / (64 * math.log(2)), rtol=1e-6)
    if config.family == "glow":
        # ActNorm's data-dependent init already standardises the logit data, so even
        # 20 steps sit far below the uniform distribution's 181 nats.
        assert result["nll_nats"] < UNIFORM_NLL
    assert 0.0 <= result["frechet_distance"]
    if config.model.conditional:
        assert 0.0 <= result["class_accuracy"] <= 1.0
        rows = guidance_sweep.guidance_sweep(config, wd, ["0", "2"], 20)
        assert [r["guidance"] for r in rows] == [0.0, 2.0]
        assert all(0.0 <= r["class_accuracy"] <= 1.0 and r["frechet_distance"] >= 0 for r in rows)
        # Same noise and labels: w = 2 moves the samples (a sampler that ignored the
        # weight, or a label-blind net, would return identical ones).
        exp, state = main._restore(config, wd)
        draw = lambda w: exp.model.sample(state.ema_params, jax.random.PRNGKey(0), 20, method="euler",
                                          num_steps=4, guidance=w)
        assert float(jnp.max(jnp.abs(draw(2.0) - draw(0.0)))) > 1e-6
