"""Each trained network's task metric, scored over the held-out rows of its config.

``TASKS`` maps a config's name to its ``Task``. ``Task.score(outputs, reference)`` takes one graph's
outputs and FP32's, each a list over the config's outputs of arrays over every held-out row in
order (held-out row ``i`` is ``data`` sample ``HELDOUT + i``), and returns one number. Where the
data carries ground truth (CREPE's pitches, ONet's drawn landmarks) the metric is against it, so
FP32 has an error of its own; elsewhere it is against FP32's own decision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from benchmarks.trained import data

Outputs = list[np.ndarray]

CREPE_CENTS_OFFSET = 1997.3794084376191  # torchcrepe.convert: cents of pitch bin 0
CENTS_PER_BIN = 20
PNET_THRESHOLD = 0.6  # facenet-pytorch MTCNN's default thresholds[0]
DB_THRESHOLD = 0.3  # rapidocr's Det thresh


# A task metric is a ratio of sums over the held-out rows (a mean, or an IoU over pixels): written
# as per-row numerators and denominators, it can be recomputed over rows drawn with replacement,
# which is how a difference between two graphs is told from the noise of the rows scored.
Parts = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Task:
    metric: str  # what the number is, with its unit
    lower_is_better: bool
    parts: Callable[[Outputs, Outputs], Parts]
    digits: int = 3  # decimals shown: a cosine near 1 needs more
    scale: float = 1.0
    empty: float = 0.0  # the score when every denominator is 0

    def better(self, a: float, b: float) -> bool:
        """``a`` is at least as good as ``b``."""
        return a <= b if self.lower_is_better else a >= b

    def score(self, outputs: Outputs, reference: Outputs) -> float:
        return self.resampled(outputs, reference, np.arange(len(outputs[-1]))[None])[0]

    def resampled(self, outputs: Outputs, reference: Outputs, draws: np.ndarray) -> np.ndarray:
        """The score over each row of ``draws`` (held-out row indices, drawn with replacement)."""
        num, den = self.parts(outputs, reference)
        totals = den[draws].sum(axis=1)
        safe = np.where(totals == 0, 1.0, totals)
        return np.where(totals == 0, self.empty, self.scale * num[draws].sum(axis=1) / safe)


def _per_row(values: np.ndarray) -> Parts:
    """A plain mean over rows."""
    return values.astype(np.float64), np.ones(len(values))


def crepe_cents(salience: np.ndarray) -> np.ndarray:
    """CREPE's decoding (crepe's ``to_local_average_cents``): the salience-weighted mean of the
    cents of the nine bins around the peak. torchcrepe's ``weighted_argmax`` weighs by a sigmoid
    of the saliences instead, which flattens the weights; the peak is the same."""
    peak = salience.argmax(axis=1)
    cents = CREPE_CENTS_OFFSET + CENTS_PER_BIN * np.arange(salience.shape[1])
    out = np.empty(len(salience))
    for row, center in enumerate(peak):
        lo, hi = max(0, center - 4), min(salience.shape[1], center + 5)
        weights = salience[row, lo:hi]
        out[row] = (weights * cents[lo:hi]).sum() / max(weights.sum(), 1e-12)
    return out


def pitch_parts(outputs: Outputs, reference: Outputs) -> Parts:
    """|decoded pitch - true pitch| in cents, per row."""
    truth = np.array([data.tone(data.HELDOUT + i)[1] for i in range(len(outputs[0]))])
    return _per_row(np.abs(crepe_cents(outputs[0]) - 1200 * np.log2(truth / 10.0)))


def landmark_parts(outputs: Outputs, reference: Outputs) -> Parts:
    """Mean distance in pixels of the 48x48 crop between ONet's five landmarks and the drawn ones,
    per crop; crops without a face count for nothing."""
    marks = outputs[1]
    num, den = np.zeros(len(marks)), np.zeros(len(marks))
    for i in range(len(marks)):
        truth = data.face_crop(data.HELDOUT + i)[1]
        if truth is not None:
            found = np.stack([marks[i, :5], marks[i, 5:]], axis=1)  # ONet: five xs, then five ys
            num[i], den[i] = np.linalg.norm(found - truth, axis=1).mean() * data.ONET_SIZE, 1.0
    return num, den


def mask_parts(mask: np.ndarray, reference: np.ndarray) -> Parts:
    """Per row, the pixels of two boolean masks' intersection and union: their IoU is the ratio."""
    axes = tuple(range(1, mask.ndim))
    inter = np.logical_and(mask, reference).sum(axis=axes).astype(np.float64)
    return inter, np.logical_or(mask, reference).sum(axis=axes).astype(np.float64)


def face_map_parts(outputs: Outputs, reference: Outputs) -> Parts:
    """PNet's face windows (probability above MTCNN's first threshold) against FP32's."""
    return mask_parts(outputs[1][:, 1] > PNET_THRESHOLD, reference[1][:, 1] > PNET_THRESHOLD)


def text_mask_parts(outputs: Outputs, reference: Outputs) -> Parts:
    """The detector's binarized text mask (rapidocr's threshold) against FP32's."""
    return mask_parts(outputs[0] > DB_THRESHOLD, reference[0] > DB_THRESHOLD)


def cosine_parts(outputs: Outputs, reference: Outputs) -> Parts:
    """Each embedding's cosine with FP32's: what a verification threshold is set on."""
    a, b = outputs[0], reference[0]
    return _per_row((a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12))


PITCH_ERROR = Task("pitch error, cents", True, pitch_parts)
EMBEDDING_COSINE = Task("embedding cosine vs FP32", False, cosine_parts, digits=5)
TASKS: dict[str, Task] = {
    "crepe_tiny": PITCH_ERROR,
    "crepe_full": PITCH_ERROR,
    "mtcnn_onet": Task("landmark error, px", True, landmark_parts),
    "mtcnn_pnet": Task("face-map IoU vs FP32, %", False, face_map_parts, scale=100.0, empty=100.0),
    "speaker_encoder": EMBEDDING_COSINE,
    "rapidocr_det": Task("text-mask IoU vs FP32, %", False, text_mask_parts, scale=100.0, empty=100.0),
    "minilm_l6": EMBEDDING_COSINE,
}
