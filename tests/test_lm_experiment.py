"""The "lm" family through the experiment driver on a tiny config: text sources
(a stdlib-like tree and a tiny locally built TFDS dataset), the real train loop,
sampling and evaluation in nats/token, bits/byte and perplexity, and bad input."""
import hashlib
import itertools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import main, registry, text_source
from experiments.logging import read_metrics
from genjax.autoregressive import make_lm
from genjax.data import text
from genjax.nn import transformer
from lm_testing import fake_stdlib, tiny_config


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("stdlib")
    return str(root), fake_stdlib(root)


def test_split_rule_on_known_stdlib_paths():
    # The held-out files of the split, and files that train.
    held_out = ["tarfile.py", "cgi.py", "tempfile.py", "_collections_abc.py", "email/utils.py"]
    train = ["os.py", "json/decoder.py", "typing.py"]
    for path in held_out + train:
        residue = int(hashlib.md5(path.encode()).hexdigest(), 16) % 20
        assert text.is_validation(path) == (residue == 0) == (path in held_out), path


def test_stdlib_source_streams_and_batches(corpus):
    root, files = corpus
    config = tiny_config(root)
    config.family = "lm"
    source = registry.build_source_for(config)
    assert isinstance(source, text_source.TextSource)
    order = sorted(files)
    train = b"".join(files[r] for r in order if text.split_of(r) == "train")
    val = b"".join(files[r] for r in order if text.split_of(r) == "validation")
    assert source.train_tokens.tobytes() == train and source.validation_tokens.tobytes() == val
    batch = jax.jit(source.batch_fn(4))(jax.random.PRNGKey(0), 3)["tokens"]
    assert batch.shape == (4, config.data.seq_len + 1) and batch.dtype == jnp.int32
    for row in np.asarray(batch):
        assert bytes(row.astype(np.uint8).tolist()) in train  # windows of the train stream


def test_train_sample_evaluate_through_the_driver(corpus, tmp_path):
    root, _ = corpus
    config = tiny_config(root)
    wd = str(tmp_path)
    with open(os.path.join(wd, "config.json"), "w") as f:
        f.write(config.to_json())
    state = main.train(config, wd, progress=False)
    assert int(state.step) == 40
    samples = main.sample(config, wd)
    assert samples.shape == (2, 4 + 8)
    np.testing.assert_array_equal(samples[:, :4], np.frombuffer(b"def ", np.uint8)[None].repeat(2, 0))
    assert os.path.exists(os.path.join(wd, "samples.txt"))
    result = main.evaluate(config, wd)
    nats = result["nats_per_token"]
    assert result["bits_per_byte"] == pytest.approx(nats / math.log(2))
    assert result["perplexity"] == pytest.approx(math.exp(nats))
    # Uniform bytes cost 8 bits; the tiny corpus uses about 40 characters and
    # repeats itself, so 40 steps of training must get well below that.
    assert result["bits_per_byte"] < 6.0
    curve = json.load(open(os.path.join(wd, "validation_curve.json")))
    assert [p["step"] for p in curve] == [20, 40]
    assert 0 < curve[0]["train_seconds"] < curve[1]["train_seconds"]
    assert all(np.isfinite(p["bits_per_byte"]) for p in curve)
    # The exact log-likelihood and the loss agree on the same windows.
    model = registry.build_model(config, None)
    windows = text.eval_windows(np.frombuffer(b"def f(x):\n    return x\n" * 3, np.uint8), 16)
    loss, _ = model.loss(state.ema_params, jax.random.PRNGKey(0), {"tokens": windows}, train=False)
    logp = model.log_prob(state.ema_params, None, {"tokens": windows})
    assert float(loss) == pytest.approx(-float(jnp.mean(logp)) / 16, rel=1e-5)
    # MFU logged against the configured peak: tokens/s x (6N + 6 L n_ctx d) / peak,
    # with N the non-embedding parameters actually in the trained tree.
    n = transformer.num_params(state.params, non_embedding=True)
    flops_per_step = 8 * 16 * (6 * n + 6 * 2 * 16 * 32)
    # (rates are logged with the last step of each compiled call: train.log_every
    # records the loss more often)
    rated = [r for r in read_metrics(os.path.join(wd, "metrics.jsonl")) if "steps_per_sec" in r]
    assert [r["step"] for r in rated] == [20, 40]
    for record in rated:
        assert record["mfu"] == pytest.approx(record["steps_per_sec"] * flops_per_step / 1e9, rel=1e-6)


def test_bad_prompts_and_contexts_give_clear_errors(corpus):
    root, _ = corpus
    config = tiny_config(root)
    lm = make_lm(bos_id=text.START_TOKEN, **text_source.transformer_kwargs(config))
    params = lm.init(jax.random.PRNGKey(0), {"tokens": jnp.zeros((1, 5), jnp.int32)})
    with pytest.raises(ValueError, match=r"prompt holds token ids \[-1, 300\] outside \[0, 256\)"):
        lm.sample(params, jax.random.PRNGKey(0), 1, prompt=np.array([65, 300, -1]), max_new_tokens=2)
    config.sample.num_steps = 13  # "def " + 13 > max_len = 16
    with pytest.raises(ValueError, match="exceeds the model's max_len=16"):
        text_source.build_lm_model(config).sample(params, jax.random.PRNGKey(0), 1)
    with pytest.raises(ValueError, match="context length 20.*exceeds max_len=16"):
        lm.loss(params, None, {"tokens": jnp.zeros((1, 21), jnp.int32)})
    config.data.seq_len = 32
    with pytest.raises(ValueError, match="data.seq_len=32 exceeds model.max_len=16"):
        registry.build_source_for(config)
    config.data.seq_len = 16
    config.data.name = "shakespeare.txt"
    with pytest.raises(ValueError, match="unknown text dataset 'shakespeare.txt'"):
        registry.build_source_for(config)


tfds = pytest.importorskip("tensorflow_datasets")
DOCS = {"train": ["To be, or not to be", "\nthat is the question: ", "ünïcode ✓ " * 3],
        "test": ["Whether 'tis nobler in the mind"]}

with tfds.core.registered.skip_registration():

    class GenjaxLmTinyText(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(docs) for split, docs in DOCS.items()}

        def _generate_examples(self, docs):
            for i, doc in enumerate(docs):
                yield i, {"text": doc}


def test_tfds_text_source(tmp_path):
    GenjaxLmTinyText(data_dir=str(tmp_path), file_format="array_record").download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    config = tiny_config("")
    config.data.name = "tfds:genjax_lm_tiny_text"
    config.data.data_dir = str(tmp_path)
    config.data.validation_split = "test"
    config.data.seq_len = 8
    source = registry.build_source_for(config)
    docs = [d.encode("utf-8") for d in DOCS["train"]]
    # TFDS stores records in its own order: the stream is the documents in some order.
    assert source.train_tokens.tobytes() in {b"".join(p) for p in itertools.permutations(docs)}
    assert source.validation_tokens.tobytes() == DOCS["test"][0].encode("utf-8")
    batch = source.batch_fn(3)(jax.random.PRNGKey(1), 0)["tokens"]
    assert batch.shape == (3, 9)
    for row in np.asarray(batch):
        assert bytes(row.astype(np.uint8).tolist()) in source.train_tokens.tobytes()
