"""scikit-learn's digits as 16x16 images, with a fixed train/calibration/held-out split.

The 8x8 originals are upsampled 2x so the example networks do enough work per
image for INT8 to matter; the data stays real.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import numpy as np

from pipeline.errors import PipelineError

SPLITS = {"train": slice(0, 1197), "calibration": slice(1197, 1497), "heldout": slice(1497, 1797)}
IMAGE_SIZE = 16
MEAN, STD = 0.30, 0.40  # of the scaled pixels over the training split, rounded


@lru_cache(maxsize=1)
def _all() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise PipelineError("the example models need scikit-learn: pip install 'trtpipe[examples]'") from None
    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0  # (1797, 8, 8) in [0, 1]
    images = images.repeat(2, axis=1).repeat(2, axis=2)  # nearest 2x upsample -> 16x16
    images = ((images - MEAN) / STD)[:, None, :, :]
    order = np.random.RandomState(0).permutation(len(images))
    return np.ascontiguousarray(images[order]), digits.target[order].astype(np.int64)


def split(name: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = _all()
    return images[SPLITS[name]], labels[SPLITS[name]]


def _shifted(images: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """Shift each image by up to 2 pixels: more calibration samples from real digits."""
    out = np.empty_like(images)
    background = images.min()
    for i, img in enumerate(images):
        dy, dx = rng.randint(-2, 3, size=2)
        shifted = np.roll(img, (dy, dx), axis=(1, 2))
        if dy > 0:
            shifted[:, :dy] = background
        elif dy < 0:
            shifted[:, dy:] = background
        if dx > 0:
            shifted[:, :, :dx] = background
        elif dx < 0:
            shifted[:, :, dx:] = background
        out[i] = shifted
    return out


def calibration(samples: int, batch_size: int, input_name: str = "image") -> Iterator[dict[str, np.ndarray]]:
    """Calibration batches from the calibration split.

    Past the split's 300 images, further passes use shifted copies (seeded), so
    any sample count draws on real digits and never on random noise.
    """
    images, _ = split("calibration")
    rng = np.random.RandomState(1)
    pool = images
    done = 0
    while done < samples:
        for start in range(0, len(pool), batch_size):
            if done >= samples:
                return
            batch = pool[start : start + min(batch_size, samples - done)]
            done += len(batch)
            yield {input_name: batch}
        pool = _shifted(images, rng)


def heldout(batch_size: int, input_name: str = "image") -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    images, labels = split("heldout")
    for start in range(0, len(images), batch_size):
        yield {input_name: images[start : start + batch_size]}, labels[start : start + batch_size]
