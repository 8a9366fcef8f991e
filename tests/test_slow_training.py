"""End-to-end: the default config trains a VP-SDE whose probability-flow NLL on
held-out checkerboard samples is within 0.2 nats of the data entropy (ln 32)."""
import pytest

from configs import toy_vpsde
from experiments import main


@pytest.mark.slow
def test_default_vp_sde_reaches_entropy_plus_0_2_nats(tmp_path):
    config = toy_vpsde.get_config()
    config.eval.num = 2000
    main.train(config, str(tmp_path), progress=False)
    result = main.evaluate(config, str(tmp_path), heatmap=False)
    # 3.466 + 0.2; the NLL's standard error at 2000 samples is ~0.01 nats.
    assert result["nll_nats"] <= 3.67, result
