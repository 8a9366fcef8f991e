r"""Training tokens/s of genjax's transformer LM against the same model in PyTorch.

    python -m benchmarks.lm_vs_torch [--layers 4] [--width 256] [--heads 4] \
        [--context 256] [--batch 16] [--steps 5] [--repeats 7] [--attention auto] \
        [--gelu tanh] [--single-thread] [--torch-device cpu|cuda] [--dtype float32|bfloat16]

Both sides train a GPT on a byte vocabulary (256 tokens): learned positions,
pre-LayerNorm blocks of causal self-attention (qkv and output projections with
bias) and a GELU MLP of width 4 * d_model (tanh approximation by default,
--gelu exact for the erf form, the same on both sides), a final LayerNorm and
an untied bias-free unembedding, float32 throughout. The optimizer is
AdamW (b1 0.9, b2 0.95, eps 1e-8, weight decay 0.1 on every parameter, constant
learning rate) after global-norm gradient clipping at 1.0; genjax's side is
`genjax.nn.transformer.Transformer` with the next-token cross-entropy of
`genjax.autoregressive.lm`, `genjax.train.make_optimizer` and `make_train_fn`,
one jitted step per call.
PyTorch runs eagerly (`torch.nn.functional.scaled_dot_product_attention` with
is_causal=True, `torch.optim.AdamW`), as a straightforward PyTorch script would.

Both see the same batch every step. After a warm-up, the two are timed in
alternation (`--repeats` rounds of `--steps` steps each, so load from other
processes hits both alike); the medians give tokens/s and the ratio
genjax / PyTorch (> 1: genjax is faster), and so does the median of the ratios
within each round (robust to the machine's speed drifting during the run).

--single-thread pins both to one thread (XLA's Eigen pool off, torch one
intra-op thread) and times process CPU seconds instead of wall seconds: a
per-core comparison that stays meaningful when other jobs share the machine
(multi-threaded wall times on a loaded machine mostly measure the scheduler).

PyTorch is a benchmark-only dependency (requirements-bench.txt).
"""
import argparse
import math
import os
import statistics
import sys
import time

if __name__ == "__main__" and "--single-thread" in sys.argv:
    # Must be set before XLA starts.
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    )

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import device_description  # noqa: E402
from experiments import cpu_kernels  # noqa: E402
from genjax import train  # noqa: E402
from genjax.autoregressive.lm import token_nll  # noqa: E402
from genjax.nn.transformer import Transformer  # noqa: E402

VOCAB = 256
LR, B1, B2, EPS, WD, CLIP = 3e-4, 0.9, 0.95, 1e-8, 0.1, 1.0


# ----------------------------------------------------------------------------- PyTorch


class TorchBlock(torch.nn.Module):
    def __init__(self, d_model, num_heads, num_layers, gelu):
        super().__init__()
        self.heads = num_heads
        self.gelu = gelu
        self.ln1 = torch.nn.LayerNorm(d_model, eps=1e-6)
        self.qkv = torch.nn.Linear(d_model, 3 * d_model)
        self.out = torch.nn.Linear(d_model, d_model)
        self.ln2 = torch.nn.LayerNorm(d_model, eps=1e-6)
        self.fc = torch.nn.Linear(d_model, 4 * d_model)
        self.proj = torch.nn.Linear(4 * d_model, d_model)
        for lin in (self.qkv, self.fc):
            torch.nn.init.normal_(lin.weight, std=0.02)
            torch.nn.init.zeros_(lin.bias)
        for lin in (self.out, self.proj):
            torch.nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * num_layers))
            torch.nn.init.zeros_(lin.bias)

    def forward(self, x_BTD):
        B, T, D = x_BTD.shape
        H = self.heads
        qkv = self.qkv(self.ln1(x_BTD)).view(B, T, 3, H, D // H).permute(2, 0, 3, 1, 4)
        a_BHTK = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True)
        x_BTD = x_BTD + self.out(a_BHTK.transpose(1, 2).reshape(B, T, D))
        h_BTF = F.gelu(self.fc(self.ln2(x_BTD)), approximate=self.gelu)
        return x_BTD + self.proj(h_BTF)


class TorchGPT(torch.nn.Module):
    def __init__(self, *, num_layers, d_model, num_heads, max_len, gelu):
        super().__init__()
        self.embed = torch.nn.Parameter(0.02 * torch.randn(VOCAB, d_model))
        self.pos_embed = torch.nn.Parameter(0.02 * torch.randn(max_len, d_model))
        self.blocks = torch.nn.ModuleList(TorchBlock(d_model, num_heads, num_layers, gelu) for _ in range(num_layers))
        self.ln_f = torch.nn.LayerNorm(d_model, eps=1e-6)
        self.unembed = torch.nn.Parameter(0.02 * torch.randn(d_model, VOCAB))

    def forward(self, tokens_BT):
        x_BTD = self.embed[tokens_BT] + self.pos_embed[: tokens_BT.shape[1]]
        for block in self.blocks:
            x_BTD = block(x_BTD)
        return self.ln_f(x_BTD) @ self.unembed


def torch_trainer(args, tokens_np):
    model = TorchGPT(
        num_layers=args.layers, d_model=args.width, num_heads=args.heads, max_len=args.context,
        gelu="tanh" if args.gelu == "tanh" else "none",
    )
    model = model.to(args.torch_device)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(B1, B2), eps=EPS, weight_decay=WD)
    tokens = torch.from_numpy(tokens_np).long().to(args.torch_device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def step():
        # bfloat16: matmul inputs in bf16, parameters and the loss in float32 (as genjax's dtype).
        with torch.autocast(args.torch_device, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16"):
            logits = model(inputs)
        loss = F.cross_entropy(logits.float().reshape(-1, VOCAB), targets.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        return loss.item()

    return model, step


# ----------------------------------------------------------------------------- genjax


def genjax_step(args, tokens_np):
    """(jitted train step, initial state, its batches argument) of the genjax side."""
    net = Transformer(
        vocab_size=VOCAB, num_layers=args.layers, d_model=args.width, num_heads=args.heads,
        max_len=args.context, gelu_approximate=args.gelu == "tanh",
        **cpu_kernels.kernel_options(args.attention, args.layer_norm, args.gelu_kernel),
        dtype=getattr(jnp, args.dtype),
    )

    def init(key, batch):
        return net.init(key, batch["tokens"][:, :-1])["params"]

    def loss(params, key, batch):
        logits_BLV = net.apply({"params": params}, batch["tokens"][:, :-1])
        nats = jnp.mean(token_nll(logits_BLV, batch["tokens"][:, 1:]))
        return nats, {}
    tx, _ = train.make_optimizer(
        learning_rate=LR, total_steps=10**6, schedule="constant", grad_clip=CLIP,
        weight_decay=WD, b1=B1, b2=B2, eps=EPS,
    )
    batch = {"tokens": jnp.asarray(tokens_np)}
    state = train.init_state(init, tx, jax.random.key(0), batch)
    step_fn = jax.jit(train.make_train_fn(loss, tx, steps_per_call=1, unroll=True), donate_argnums=0)
    batches = jax.tree_util.tree_map(lambda x: x[None], batch)
    return step_fn, state, batches


def genjax_trainer(args, tokens_np):
    step_fn, state, batches = genjax_step(args, tokens_np)
    box = [state]

    def step():
        box[0], metrics = step_fn(box[0], batches)
        return float(metrics["loss"][0])

    return step


def timed(step, num_steps, clock):
    t0 = clock()
    for _ in range(num_steps):
        loss = step()  # .item() / float() wait for the step to finish
    return (clock() - t0) / num_steps, loss


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The model and batch flags both sides share (also used by benchmarks.lm_profile)."""
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--layer-norm", default="auto", help="genjax Transformer.layer_norm (auto: the CPU kernel)")
    parser.add_argument("--gelu-kernel", default="auto", help="genjax Transformer.gelu (auto: the CPU kernel)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="matmul inputs (torch: autocast); parameters stay float32")
    parser.add_argument("--torch-device", default="cpu",
                        help="'cuda' to compare with JAX on a GPU (both then use TF32 float32 matmuls)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(parser)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--attention", default="auto", help="genjax Transformer.attention")
    parser.add_argument("--gelu", choices=("tanh", "exact"), default="tanh")
    parser.add_argument("--single-thread", action="store_true",
                        help="one thread each; time process CPU seconds")
    parser.add_argument("--with-xla-kernels", action="store_true",
                        help="also time genjax with XLA's attention, LayerNorm and MLP (no CPU kernels), in the same rounds")
    args = parser.parse_args()
    if args.torch_device != "cpu":
        # JAX's default float32 matmul precision on GPUs is TF32; let torch use it too.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.single_thread:
        torch.set_num_threads(1)
    clock = time.process_time if args.single_thread else time.perf_counter

    print(f"device: {device_description()}; torch {torch.__version__} on {args.torch_device} "
          f"with {torch.get_num_threads()} threads")
    print(f"model: {args.layers} layers, width {args.width}, {args.heads} heads, context {args.context}, "
          f"batch {args.batch}, byte vocabulary, AdamW, {args.gelu} GELU, {args.dtype} matmuls; "
          f"genjax {cpu_kernels.kernel_options(args.attention, args.layer_norm, args.gelu_kernel)}")
    print("timing: " + ("process CPU seconds, one thread each" if args.single_thread else "wall seconds"))
    torch.manual_seed(0)
    tokens_np = np.random.default_rng(0).integers(0, VOCAB, (args.batch, args.context + 1), dtype=np.int32)
    model, torch_step = torch_trainer(args, tokens_np)
    sides = {"genjax": genjax_trainer(args, tokens_np)}
    if args.with_xla_kernels:
        xla_args = argparse.Namespace(**{**vars(args), "attention": "blocked", "layer_norm": "xla", "gelu_kernel": "xla"})
        sides["genjax, XLA attention, LayerNorm and MLP"] = genjax_trainer(xla_args, tokens_np)
    sides["torch"] = torch_step
    print(f"parameters: torch {sum(p.numel() for p in model.parameters()):,}")

    t0 = time.perf_counter()
    first_loss = sides["genjax"]()
    print(f"genjax first step (compile included): {time.perf_counter() - t0:.1f} s, loss {first_loss:.3f}; "
          f"torch first loss {torch_step():.3f} (ln 256 = {math.log(VOCAB):.3f})")
    for _ in range(2):  # warm-up
        for step in sides.values():
            step()

    names = list(sides)
    times = {name: [] for name in names}
    for r in range(args.repeats):
        # Rotate which side goes first, so slow drifts in machine load hit all alike.
        for name in names[r % len(names):] + names[: r % len(names)]:
            seconds, _ = timed(sides[name], args.steps, clock)
            times[name].append(seconds)
    tokens_per_step = args.batch * args.context
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name in names:
        print(f"per-step seconds, {name}: {' '.join(f'{t:.3f}' for t in times[name])}")
    for name in names:
        print(f"{name}: {tokens_per_step / medians[name]:,.0f} tokens/s ({medians[name] * 1e3:.1f} ms/step, "
              f"median of {args.repeats})")
    for name in names[:-1]:
        label = "genjax / torch" if name == "genjax" else f"{name} / torch"
        # Per round: the two sides ran back to back, so slow drifts in machine speed cancel.
        per_round = statistics.median(t / s for s, t in zip(times[name], times["torch"]))
        print(f"ratio {label} tokens/s: {medians['torch'] / medians[name]:.2f}x "
              f"(median of per-round ratios {per_round:.2f}x)")


if __name__ == "__main__":
    main()
