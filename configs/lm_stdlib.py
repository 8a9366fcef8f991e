"""A byte-level transformer LM on the Python standard library's sources (offline).

    python -m experiments.main --config=configs/lm_stdlib.py --workdir=runs/lm --mode=all
    python -m experiments.compress compress --workdir=runs/lm IN OUT

Sized to train in about 20 minutes on a 2-core CPU. Set data.name="tfds:tiny_shakespeare"
(and data.data_dir) for a prepared TFDS text dataset.
"""
import ml_collections

from configs import common


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.family = "lm"

    c.data = ml_collections.ConfigDict()
    c.data.name = "stdlib"              # stdlib | tfds:<name>
    c.data.data_dir = ""                # stdlib root or TFDS data_dir ("" = default)
    c.data.train_split = "train"        # TFDS split names
    c.data.validation_split = "validation"
    c.data.separator = ""               # joins TFDS documents (lm1b: "\n")
    c.data.batch_size = 16
    c.data.seq_len = 256                # training window (<= model.max_len)

    c.model = ml_collections.ConfigDict()
    c.model.num_layers = 4
    c.model.d_model = 128
    c.model.num_heads = 4
    c.model.d_ff = 0                    # 0 = 4 * d_model
    c.model.max_len = 256               # context; the compressor slides a window of this size
    c.model.dropout = 0.0
    c.model.positions = "rotary"        # learned | rotary
    c.model.tie_embeddings = False
    c.model.dtype = "float32"           # float32 | bfloat16 (matmul inputs)
    c.model.attention = "auto"          # auto (CPU kernel or blocked on CPU, cuDNN for bf16 on NVIDIA GPUs) | cpu_kernel | blocked | einsum | dpa | xla | cudnn
    c.model.layer_norm = "auto"         # auto (CPU kernel where it builds, else XLA) | cpu_kernel | xla
    c.model.gelu = "auto"               # the MLP's bias + GELU: auto | cpu_kernel | xla (as layer_norm)

    c.optim = common.optimizer(learning_rate=2e-3, warmup_steps=50)
    c.optim.weight_decay = 0.01
    c.optim.ema_decay = 0.99            # short run: a 100-step EMA horizon

    c.train = common.training(num_steps=600, checkpoint_every=60, steps_per_call=20)
    c.train.keep_checkpoints = 20       # every checkpoint is a point of the validation curve
    c.train.grad_accum_steps = 1        # micro-batches per step (the batch is split, gradients averaged)
    c.train.peak_flops = 0.0            # FLOP/s behind the logged MFU; 0 = measure a large matmul at start

    c.sample = ml_collections.ConfigDict()
    c.sample.method = "ancestral"
    c.sample.num = 4
    c.sample.num_steps = 200            # new bytes per sample
    c.sample.prompt = "def "
    c.sample.temperature = 0.8
    c.sample.top_k = 0                  # 0 = off
    c.sample.top_p = 0.0                # 0 = off

    c.eval = ml_collections.ConfigDict()
    c.eval.params = "ema"               # ema | raw: the weights sampled and evaluated (--mode=sample|eval)
    c.eval.batch_size = 64              # validation windows per forward pass
    c.eval.num_windows = 0              # validation windows for the final numbers (0 = all)
    c.eval.curve_windows = 128          # windows per point of the validation curve (0 = no curve)
    c.compress = ml_collections.ConfigDict()
    c.compress.batch_size = 1           # held-out files coded side by side (1: as the CLI codes them)
    c.compress.chunk = 512              # coder steps per compiled call (a multiple of max_len - keep)
    c.compress.keep = 128               # context kept when the window slides; max_len - keep divides max_len
    return c
