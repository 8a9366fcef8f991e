"""VQ-VAE on the 8x8 digits (17 levels) with a categorical decoder (docs/vae.md).

    python -m experiments.main --config=configs/digits_vqvae.py --workdir=runs/digits_vqvae

A 4x4 grid of codes from a codebook of model.codebook_size vectors, the
straight-through estimator, commitment weight 0.25 and EMA codebook updates (van
den Oord et al. 2017), the codebook carried as model state. No likelihood (no
prior over the codes is trained): the evaluation reports the reconstruction
error and codebook perplexity on the test split, and the Fréchet distance of
samples decoded from codes drawn by their usage frequencies.
"""
import ml_collections

from configs import common


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.family = "vqvae"

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"
    c.data.batch_size = 64
    c.data.data_dir = ""

    c.model = ml_collections.ConfigDict()
    c.model.conditional = False
    c.model.channels = (64,)            # one stage (3x3, then stride 2): a 4x4 grid of codes
    c.model.code_dim = 16
    c.model.codebook_size = 64
    c.model.commitment_weight = 0.25    # beta (van den Oord et al. 2017)
    c.model.codebook_decay = 0.99       # gamma of the EMA codebook updates

    c.optim = common.optimizer(learning_rate=1e-3, warmup_steps=200)
    c.train = common.training(num_steps=3_000, checkpoint_every=1_000)

    c.sample = ml_collections.ConfigDict()
    c.sample.num = 100
    c.sample.method = "mode"            # mode: most probable levels | ancestral: x ~ p(x|z_q)

    c.eval = ml_collections.ConfigDict()
    c.eval.params = "ema"               # ema | raw
    c.eval.split = "test"
    c.eval.num = 0                      # images of the split to evaluate (0: all)
    c.eval.batch_size = 64
    c.eval.classifier_dir = "runs/digits_classifier"
    c.lock()
    return c
