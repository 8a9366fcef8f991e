"""Reads image and text datasets from disk.

Offline default: sklearn's 8x8 digits (shipped with scikit-learn), 17 grey
levels (integers 0..16), one channel. Splits follow the order of the file:
train [:1000], val [1000:1350], test [1350:] (447 images). Labels are kept for
class-conditional models.

Real datasets (MNIST, CIFAR-10, tiny_shakespeare, lm1b) are read through
`tfds.data_source` from a TFDS data directory where they were prepared in
array_record format (`tfds build NAME --file_format=array_record`). Nothing is
downloaded here, and TensorFlow is not needed.
"""
import numpy as np

from experiments.configuration import ConfigError

DIGITS_SPLITS = {"train": slice(0, 1000), "val": slice(1000, 1350), "test": slice(1350, None)}
DIGITS_LEVELS = 17
DIGITS_CLASSES = 10


def load_digits(split: str):
    """(images_NHW1 uint8 in 0..16, labels_N int32) of one split of the 8x8 digits."""
    if split not in DIGITS_SPLITS:
        raise ValueError(f"unknown digits split {split!r}; expected one of {sorted(DIGITS_SPLITS)}")
    from sklearn.datasets import load_digits as sklearn_digits

    data = sklearn_digits()
    part = DIGITS_SPLITS[split]
    images = data.images[part].astype(np.uint8)[..., None]
    return images, data.target[part].astype(np.int32)


_READ_CHUNK = 4096  # records per __getitems__ call


class DatasetUnavailable(ConfigError, FileNotFoundError):
    """A TFDS dataset that cannot be read here: not prepared in the data dir looked
    in, or tensorflow-datasets not installed. One message says which dataset, where
    it was looked for and how to prepare it (the command line prints it as one
    error, exit code 2)."""


def _prepare_hint(name: str) -> str:
    return (f"Prepare it on a machine with network access with `tfds build {name} "
            f"--file_format=array_record --data_dir=DIR`, copy DIR here and pass it as data_dir "
            f"(--config.data.data_dir=DIR).")


def _tfds_source(name: str, split: str, data_dir):
    """The random-access data source of a prepared TFDS split; never downloads."""
    try:
        import tensorflow_datasets as tfds  # heavy; only when a TFDS dataset is asked for
    except ImportError:
        raise DatasetUnavailable(
            f"TFDS dataset {name!r} needs the package tensorflow-datasets, which is not installed "
            f"(pip install tensorflow-datasets; TensorFlow itself is not needed). "
            f"{_prepare_hint(name)}") from None

    where = data_dir if data_dir is not None else f"the default TFDS data dir ({tfds.core.constants.DATA_DIR})"
    not_prepared = (f"TFDS dataset {name!r} is not prepared in {where}; nothing is downloaded here. "
                    f"{_prepare_hint(name)}")
    try:
        builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    except tfds.core.registered.DatasetNotFoundError:
        raise DatasetUnavailable(not_prepared) from None
    if not builder.is_prepared():
        raise DatasetUnavailable(not_prepared)
    return builder.as_data_source(split=split)


def _read_all(source):
    for start in range(0, len(source), _READ_CHUNK):
        yield from source.__getitems__(list(range(start, min(start + _READ_CHUNK, len(source)))))


def _field(example: dict, key: str, name: str):
    if key not in example:
        raise ValueError(f"TFDS dataset {name!r} has no feature {key!r}; it has {sorted(example)}")
    return example[key]


def load_tfds_images(name: str, split: str, data_dir=None, image_key: str = "image", label_key: str | None = "label"):
    """(images_NHWC uint8, labels_N int32 or None when label_key is None) of a prepared TFDS split.

    `split` takes TFDS split syntax ('train', 'test[:1000]'). Records come in the
    order stored on disk.
    """
    source = _tfds_source(name, split, data_dir)
    images, labels = [], []
    for example in _read_all(source):
        images.append(_field(example, image_key, name))
        if label_key is not None:
            labels.append(_field(example, label_key, name))
    if not images:
        raise ValueError(f"split {split!r} of TFDS dataset {name!r} is empty")
    images = np.stack(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(
            f"TFDS dataset {name!r} feature {image_key!r} gives {images.dtype} images of shape "
            f"{images.shape[1:]}; expected uint8 (H, W, C)"
        )
    return images, (np.asarray(labels, dtype=np.int32) if label_key is not None else None)


def load_tfds_text(name: str, split: str, data_dir=None, text_key: str = "text", separator: bytes = b""):
    """The texts of a prepared TFDS split, UTF-8 bytes joined by `separator`, as a uint8 array.

    tiny_shakespeare stores each split as one example; lm1b stores sentences
    (pass separator=b"\\n" to keep them apart).
    """
    source = _tfds_source(name, split, data_dir)
    pieces = []
    for example in _read_all(source):
        value = _field(example, text_key, name)
        pieces.append(value.encode("utf-8") if isinstance(value, str) else bytes(value))
    return np.frombuffer(separator.join(pieces), dtype=np.uint8)
