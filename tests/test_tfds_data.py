"""TFDS readers: a tiny MNIST-like and a tiny text dataset, prepared locally in
array_record format (no TensorFlow, no network), read back through the loaders."""
import io
import itertools
import os

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")
Image = pytest.importorskip("PIL.Image")

from experiments.datasets import load_tfds_images, load_tfds_text  # noqa: E402
from genjax.data import images as images_lib  # noqa: E402

IMAGES = np.random.default_rng(0).integers(0, 256, (7, 28, 28, 1), dtype=np.uint8)
LABELS = np.array([3, 0, 9, 3, 5, 1, 7], np.int32)
SPLITS = {"train": range(0, 4), "test": range(4, 7)}
TEXTS = {"train": ["To be, or not to be", "\nthat is the question:", " ünïcode ✓"], "test": ["tail"]}


def _png(image_HW1) -> bytes:
    # Images are stored PNG-encoded (as in MNIST); encoding them here with PIL
    # avoids TFDS's TensorFlow encoder.
    buffer = io.BytesIO()
    Image.fromarray(image_HW1[..., 0]).save(buffer, format="png")
    return buffer.getvalue()


# Defined without registering, so reading goes through the files alone, as on a
# machine where the datasets were prepared elsewhere.
with tfds.core.registered.skip_registration():

    class GenjaxTinyMnist(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = {"image": tfds.features.Image(shape=(28, 28, 1)), "label": tfds.features.ClassLabel(num_classes=10)}
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(idx) for split, idx in SPLITS.items()}

        def _generate_examples(self, idx):
            for i in idx:
                yield i, {"image": _png(IMAGES[i]), "label": int(LABELS[i])}

    class GenjaxTinyText(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(texts) for split, texts in TEXTS.items()}

        def _generate_examples(self, texts):
            for i, text in enumerate(texts):
                yield i, {"text": text}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    config = tfds.download.DownloadConfig(try_download_gcs=False)
    for builder_cls in (GenjaxTinyMnist, GenjaxTinyText):
        builder_cls(data_dir=str(root), file_format="array_record").download_and_prepare(download_config=config)
    return str(root)


def _match_rows(images_NHWC, candidates):
    """Index into `candidates` of each image (each must match exactly one)."""
    flat = candidates.reshape(len(candidates), -1)
    idx = []
    for image in images_NHWC:
        hits = np.flatnonzero(np.all(flat == image.reshape(1, -1), axis=1))
        assert len(hits) == 1, "a read image is not one of the written images"
        idx.append(int(hits[0]))
    return np.array(idx)


@pytest.mark.parametrize("split", ["train", "test"])
def test_images_read_back_equal_what_was_written(data_dir, split):
    images, labels = load_tfds_images("genjax_tiny_mnist", split, data_dir=data_dir)
    assert images.dtype == np.uint8 and images.shape == (len(SPLITS[split]), 28, 28, 1)
    assert labels.dtype == np.int32
    # TFDS stores records in an order shuffled by key: match each image to the
    # one written, then its label must be that image's label.
    idx = _match_rows(images, IMAGES)
    assert sorted(idx.tolist()) == list(SPLITS[split])
    np.testing.assert_array_equal(labels, LABELS[idx])
    # Reads are deterministic, and TFDS split slicing passes through.
    again, _ = load_tfds_images("genjax_tiny_mnist", split, data_dir=data_dir)
    np.testing.assert_array_equal(again, images)
    first, first_labels = load_tfds_images("genjax_tiny_mnist", f"{split}[:2]", data_dir=data_dir)
    np.testing.assert_array_equal(first, images[:2])
    np.testing.assert_array_equal(first_labels, labels[:2])
    unlabeled, none = load_tfds_images("genjax_tiny_mnist", split, data_dir=data_dir, label_key=None)
    assert none is None
    np.testing.assert_array_equal(unlabeled, images)


@pytest.mark.parametrize("split", ["train", "test"])
def test_text_reads_back_as_concatenated_utf8(data_dir, split):
    tokens = load_tfds_text("genjax_tiny_text", split, data_dir=data_dir)
    assert tokens.dtype == np.uint8
    docs = [t.encode("utf-8") for t in TEXTS[split]]
    # The stored order is TFDS's: the bytes must be the documents in some order.
    joins = {b"".join(p) for p in itertools.permutations(docs)}
    assert tokens.tobytes() in joins
    separated = load_tfds_text("genjax_tiny_text", split, data_dir=data_dir, separator=b"\n")
    assert sorted(separated.tobytes().split(b"\n")) == sorted(b"\n".join(docs).split(b"\n"))
    assert len(separated) == len(tokens) + len(docs) - 1


def test_missing_feature_is_named(data_dir):
    with pytest.raises(ValueError, match="no feature 'content'"):
        load_tfds_text("genjax_tiny_text", "train", data_dir=data_dir, text_key="content")


@pytest.mark.parametrize("name", ["mnist", "genjax_no_such_dataset"])
def test_not_prepared_names_dataset_and_dir_and_downloads_nothing(tmp_path, name):
    # A registered name (mnist) and an unknown one: neither is prepared here.
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as info:
        load_tfds_images(name, "train", data_dir=str(empty))
    message = str(info.value)
    assert repr(name) in message and str(empty) in message and "nothing is downloaded" in message
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_tfds_text(name, "train", data_dir=str(empty))
    assert os.listdir(empty) == []


def test_experiment_source_trains_on_a_tfds_dataset(data_dir):
    """`data.name = "tfds:<name>"` feeds the same image pipeline as the digits:
    256 levels dequantized into [-1, 1], labels for conditional models."""
    import jax

    from configs import base_digits
    from experiments import sources

    config = base_digits.get_config()
    config.data.name = "tfds:genjax_tiny_mnist"
    config.data.data_dir = data_dir
    config.model.conditional = True
    source = sources.build_source(config)
    assert source.data_shape == (28, 28, 1) and source.num_levels == 256 and source.num_classes == 10
    batch = jax.jit(source.batch_fn(4))(jax.random.PRNGKey(0), 3)
    assert batch["x"].shape == (4, 28, 28, 1) and batch["label"].shape == (4,)
    assert float(batch["x"].min()) >= -1.0 and float(batch["x"].max()) <= 1.0
    # Each dequantized pixel lies in the bin of one of the written images' levels.
    levels = np.asarray(images_lib.to_levels(batch["x"], 256))
    written = {img.tobytes(): int(lab) for img, lab in zip(IMAGES[SPLITS["train"]], LABELS[SPLITS["train"]])}
    for img, lab in zip(levels.astype(np.uint8), np.asarray(batch["label"])):
        assert written[img.tobytes()] == lab
