"""Reads the offline image data: sklearn's 8x8 digits (shipped with scikit-learn).

17 grey levels (integers 0..16), one channel. Splits follow the order of the
file: train [:1000], val [1000:1350], test [1350:] (447 images). Labels are kept
for class-conditional models.
"""
import numpy as np

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
