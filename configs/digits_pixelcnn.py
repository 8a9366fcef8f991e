"""Gated PixelCNN (van den Oord et al. 2016) on sklearn's 8x8 digits (17 levels):
exact NLL of the discrete images, nats per test image and bits/dim."""
import ml_collections

from configs import common


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.family = "pixelcnn"

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"
    c.data.batch_size = 64
    c.data.data_dir = ""                # for data.name = "tfds:<name>" (one channel only)

    c.model = ml_collections.ConfigDict()
    c.model.num_levels = 17             # categories per pixel: must equal the data's levels
    c.model.channels = 48               # width of the vertical and horizontal stacks
    c.model.num_layers = 8              # gated layers after the first (mask A) layer
    c.model.kernel = 3                  # gated layers: 3x3 vertical, 1x3 horizontal (masked)
    c.model.first_kernel = 7            # first layer: 7x7 vertical, 1x7 horizontal (mask A)
    c.model.head = 128                  # two 1x1 ReLU layers to the logits
    c.model.dropout = 0.5               # on the gated horizontal features while training: 1000
                                        # training images; 0.2 overfits after ~600 steps
    c.model.conditional = False         # class-conditional (label embedding in the gates)
    c.model.label_dropout = 0.1         # conditional only: null label for classifier-free guidance

    c.optim = common.optimizer(learning_rate=1e-3, warmup_steps=200)
    c.train = common.training(num_steps=1_500, checkpoint_every=500)

    c.sample = ml_collections.ConfigDict()
    c.sample.num = 100
    c.sample.method = "ancestral"       # one network pass per pixel
    c.sample.temperature = 1.0
    c.sample.guidance = 0.0             # classifier-free guidance weight w (conditional models)

    c.eval = ml_collections.ConfigDict()
    c.eval.params = "ema"               # ema | raw: the weights sampled and evaluated (--mode=sample|eval)
    c.eval.split = "test"
    c.eval.num = 0                      # images of the split to evaluate (0: all)
    c.eval.batch_size = 64              # images per log_prob call; the bar advances per call
    c.eval.classifier_dir = "runs/digits_classifier"
    c.lock()
    return c
