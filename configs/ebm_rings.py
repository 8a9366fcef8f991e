"""Energy-based model on the 2-D rings (configs/base_ebm.py; docs/ebm.md).

    python -m experiments.main --config=configs/ebm_rings.py[:cd|:ssm|:dsm] \
        --workdir=runs/ebm_rings --mode=all
"""
from configs import base_ebm


def get_config(objective: str = "dsm"):
    config = base_ebm.get_config("rings", objective)
    config.model.sigma = 0.05           # below the rings' own width 0.08
    config.model.sgld_step_size = 0.002  # chain noise sqrt(2 h) = 0.063, under the ring width
    config.sample.step_size = 1e-3
    config.lock()
    return config
