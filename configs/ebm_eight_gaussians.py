"""Energy-based model on the 2-D eight Gaussians (configs/base_ebm.py; docs/ebm.md).

    python -m experiments.main --config=configs/ebm_eight_gaussians.py[:cd|:ssm|:dsm] \
        --workdir=runs/ebm_eight_gaussians --mode=all
"""
from configs import base_ebm


def get_config(objective: str = "dsm"):
    config = base_ebm.get_config("eight_gaussians", objective)
    config.model.sigma = 0.1
    config.model.alpha = 0.01           # 0.1 pulled every data energy toward 0 (NLL 3.58 vs 3.52)
    config.sample.step_size = 1e-2      # components have sd 0.5
    config.lock()
    return config
