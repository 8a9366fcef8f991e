"""Scaling sweep: byte-level transformer LMs on the stdlib corpus, 5 sizes x 4 budgets.

    python -m experiments.scaling --workdir=runs/scaling [--config=configs/scaling_stdlib.py]

Every (size, token budget) pair is its own run from scratch with a warmup + cosine
schedule whose length is that run's budget, decaying to 10% of the peak learning
rate (Hoffmann et al. 2022, section 3.1 and figure A1: a cosine cycle longer than
the run overestimates the loss at the end of it, which biases a fit towards
larger models). One schedule per run costs the sum of all budgets, but needs
nothing beyond the trainer's own cosine schedule.

Sizes go from 25k to 0.8M non-embedding parameters (about 2.4x apart), budgets from
0.26M to 2.1M tokens (2x apart). The default takes about 30 minutes on 2 CPU
cores; the same config runs unchanged on a GPU, where sizes and budgets can grow.
"""
import ml_collections

from configs import common


def get_config(preset: str = "default"):
    """preset: "default" (5 sizes x 4 budgets) or "reduced" (the 4 smallest sizes x
    budgets from 2^17 to 2^20 tokens, about a fifth of the compute), selected with
    --config=configs/scaling_stdlib.py:reduced."""
    if preset not in ("default", "reduced"):
        raise ValueError(f"preset is {preset!r}; expected 'default' or 'reduced'")
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.batch_size = 32
    config.data.seq_len = 64             # tokens (bytes) of context per training window
    config.data.eval_windows = 1024      # validation windows, evenly spaced over the split

    # (num_layers, d_model, num_heads); d_ff = 4 d_model, learned positions.
    config.model = ml_collections.ConfigDict()
    config.model.sizes = ((2, 32, 2), (2, 48, 3), (3, 64, 4), (3, 96, 4), (4, 128, 4))

    # Training tokens per run; each a multiple of batch_size * seq_len = 2048.
    config.train = ml_collections.ConfigDict()
    config.train.tokens = (2**18, 2**19, 2**20, 2**21)
    config.train.steps_per_call = 64     # steps per compiled call (a progress line each)
    config.train.warmup_fraction = 0.05  # of each run's steps

    config.optim = common.optimizer(learning_rate=2e-3, warmup_steps=0)  # warmup from warmup_fraction
    config.optim.end_fraction = 0.1      # cosine down to 10% of the peak
    config.optim.b2 = 0.95

    if preset == "reduced":
        config.model.sizes = config.model.sizes[:4]
        config.train.tokens = (2**17, 2**18, 2**19, 2**20)

    config.fit = ml_collections.ConfigDict()
    config.fit.grid = "paper"            # "paper": the 4500-start grid of Hoffmann et al.; "small": 4 starts
    config.fit.bootstrap_samples = 200
    config.fit.level = 0.95
    config.fit.bootstrap_seed = 0
    config.lock()
    return config
