"""The flow families (flow matching, CNF, RealNVP affine and spline) run through the
experiment glue: train -> sample -> evaluate on tiny configs, with each model's
log_prob and sample given only the keywords it takes."""
import json
import os
import re

import numpy as np

import pytest

from configs import toy_cnf, toy_flow_matching, toy_realnvp
from experiments import main, registry


def tiny(get_config, **model):
    c = get_config()
    c.model.hidden = (16, 16)
    for k, v in model.items():
        c.model[k] = v
    c.data.batch_size = 64
    c.train.num_steps = 40
    c.train.steps_per_call = 20
    c.train.checkpoint_every = 20
    c.sample.num = 64
    c.eval.num = 32
    c.eval.grid_size = 4
    if "rtol" in c.eval:  # loose ODE tolerances: the test checks plumbing, not accuracy
        c.eval.rtol = c.eval.atol = c.sample.rtol = c.sample.atol = 1e-3
    return c


CASES = {
    "flow_matching": lambda: tiny(toy_flow_matching.get_config),
    "cnf": lambda: tiny(toy_cnf.get_config, train_num_steps=2),
    "realnvp_affine": lambda: tiny(toy_realnvp.get_config, coupling="affine", num_layers=2),
    "realnvp_spline": lambda: tiny(toy_realnvp.get_config, coupling="spline", num_layers=2),
}


# The CNF and spline cases (~11-13 s each with a cold compilation cache) run in
# `make test-all`; flow matching and the affine flow keep the driver path covered.
_SLOW_CASES = ("cnf", "realnvp_spline")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in _SLOW_CASES else n
                                  for n in sorted(CASES)])
def test_train_sample_evaluate(name, tmp_path):
    config, wd = CASES[name](), str(tmp_path)
    state = main.train(config, wd, progress=False)
    assert int(state.step) == 40
    samples = main.sample(config, wd)
    assert samples.shape == (64, 2) and np.all(np.isfinite(samples))
    result = main.evaluate(config, wd, samples=samples)
    # Gibbs: the cross-entropy (NLL) of any model is >= the data entropy (3.47 nats);
    # 1 nat of slack covers the sampling error of 32 held-out points. A barely
    # trained flow stays near a standard normal (~4-6 nats); 50 means broken plumbing.
    nll = result["nll_nats"]
    assert np.isfinite(nll) and result["data_entropy_nats"] - 1.0 < nll < 50.0
    assert np.isfinite(result["sliced_wasserstein"]) and result["sliced_wasserstein"] > 0
    for f in ("samples.png", "density.png", "eval.json", "samples.npz", "loss.png"):
        assert os.path.exists(os.path.join(wd, f)), f
    with open(os.path.join(wd, "eval.json")) as f:
        assert json.load(f)["nll_nats"] == result["nll_nats"]


def test_unknown_family_lists_valid_ones():
    config = tiny(toy_flow_matching.get_config)
    config.family = "flow_matchin"
    valid = sorted(registry.FAMILIES)
    assert {"flow_matching", "gan", "ebm", "lm"} <= set(valid)
    with pytest.raises(ValueError, match=r"unknown family 'flow_matchin'; expected one of "
                       + re.escape(str(valid))):
        main.Experiment(config)


def test_each_family_entry_is_complete():
    for name, family in registry.FAMILIES.items():
        assert isinstance(family, registry.Family), name
        assert family.samplers, f"family {name!r} names no sampler"
        assert family.log_prob_fields is None or isinstance(family.log_prob_fields, tuple), name
