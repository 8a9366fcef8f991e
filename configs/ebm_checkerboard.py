"""Energy-based model on the 2-D checkerboard (configs/base_ebm.py; docs/ebm.md).

    python -m experiments.main --config=configs/ebm_checkerboard.py[:cd|:ssm|:dsm] \
        --workdir=runs/ebm --mode=all

The default objective is DSM, the best of the three here (docs/ebm.md).
"""
from configs import base_ebm


def get_config(objective: str = "dsm"):
    config = base_ebm.get_config("checkerboard", objective)
    if objective == "dsm":
        config.model.hidden = (256, 256, 256)
        config.model.sigma = 0.07       # noise level: the learned law is the data blurred by it
    config.lock()
    return config
