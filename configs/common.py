"""Config sections every experiment shares: the optimizer and the training loop."""
import ml_collections


def optimizer(learning_rate: float, warmup_steps: int) -> ml_collections.ConfigDict:
    """AdamW with global-norm clipping, warmup then a schedule, and an EMA of the weights."""
    c = ml_collections.ConfigDict()
    c.learning_rate = learning_rate
    c.warmup_steps = warmup_steps
    c.schedule = "cosine"               # cosine | linear | constant
    c.grad_clip = 1.0
    c.weight_decay = 0.0
    c.b1 = 0.9                          # Adam's moment decays
    c.b2 = 0.999
    c.ema_decay = 0.999
    return c


def group_optimizers(ema_decay: float = 0.999, **groups) -> ml_collections.ConfigDict:
    """config.optim of a family with parameter groups: one `optimizer` section per
    group (its own learning rate, betas, clipping, schedule), and the EMA decay of
    the groups the family averages."""
    c = ml_collections.ConfigDict()
    for name, section in groups.items():
        section = section.copy_and_resolve_references()
        del section["ema_decay"]
        c[name] = section
    c.ema_decay = ema_decay
    return c


def training(num_steps: int, checkpoint_every: int, steps_per_call: int = 100) -> ml_collections.ConfigDict:
    """Steps, steps per compiled call, checkpoints (the newest 3 are kept), the
    FSDP degree (fsdp = n > 1 shards parameters, EMA and optimizer state over n
    devices: a ("data", "fsdp") mesh; n must divide the device count), whether
    steps are driven from Python (`experiments.experiment.Experiment.host_loop`)
    and the divergence guard's optional loss-spike rule."""
    c = ml_collections.ConfigDict()
    c.num_steps = num_steps
    c.steps_per_call = steps_per_call
    c.checkpoint_every = checkpoint_every
    c.log_every = 10                    # metrics.jsonl gets every 10th step, whatever steps_per_call is
    c.keep_checkpoints = 3
    c.fsdp = 1
    c.host_loop = "auto"                # auto | on | off: step from Python (auto: CPU + conv net)
    # Loss-spike rule of the divergence guard (experiments.run_loop.run), off at 0:
    # stop when a step's loss exceeds spike_factor x the median of the previous
    # spike_window steps' losses (for losses that stay positive).
    c.spike_factor = 0.0
    c.spike_window = 100
    return c
