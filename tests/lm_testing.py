"""Shared fixtures for the LM experiment tests: a tiny stdlib-like source tree and
a tiny LM config."""
import pathlib

from configs import lm_stdlib
from genjax.data import text


def fake_stdlib(root: pathlib.Path, num_files: int = 40) -> dict:
    """Writes small Python-like files under `root` (plus an excluded tests/ folder);
    returns {relative path: bytes} of the corpus files."""
    files = {}
    for i in range(num_files):
        rel = f"pkg{i % 3}/mod{i}.py" if i % 2 else f"mod{i}.py"
        body = "".join(f"def f{i}_{j}(x):\n    return x * {j} + {i}\n\n" for j in range(3 + i % 5))
        files[rel] = f'"""Module {i}."""\nimport os\n\n{body}'.encode()
    files["pkg0/data.py"] = bytes(range(256)) * 2  # every byte value
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "tests").mkdir(exist_ok=True)
    (root / "tests" / "test_x.py").write_bytes(b"excluded\n")
    assert {text.split_of(r) for r in files} == {"train", "validation"}
    return files


def tiny_config(data_dir: str):
    c = lm_stdlib.get_config()
    c.data.data_dir = data_dir
    c.data.batch_size = 8
    c.data.seq_len = 16
    c.model.num_layers = 2
    c.model.d_model = 32
    c.model.num_heads = 2
    c.model.max_len = 16
    c.optim.learning_rate = 3e-3
    c.optim.warmup_steps = 5
    c.optim.ema_decay = 0.5  # 40 steps: evaluate (nearly) the trained weights
    c.train.num_steps = 40
    c.train.steps_per_call = 20
    c.train.checkpoint_every = 20
    c.train.peak_flops = 1e9  # a given peak: the MFU test checks the arithmetic, no timing
    c.sample.num = 2
    c.sample.num_steps = 8
    c.sample.prompt = "def "
    c.eval.batch_size = 16
    c.eval.curve_windows = 8
    c.compress.keep = 8
    c.compress.chunk = 16
    return c
