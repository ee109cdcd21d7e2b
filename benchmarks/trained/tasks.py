"""Each trained network's task metric, scored over the held-out rows of its config.

``TASKS`` maps a config's name to its ``Task``. ``score(outputs, reference)`` takes one graph's
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


@dataclass(frozen=True)
class Task:
    metric: str  # what the number is, with its unit
    lower_is_better: bool
    score: Callable[[Outputs, Outputs], float]
    digits: int = 3  # decimals shown: a cosine near 1 needs more

    def better(self, a: float, b: float) -> bool:
        """``a`` is at least as good as ``b``."""
        return a <= b if self.lower_is_better else a >= b


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


def pitch_error(outputs: Outputs, reference: Outputs) -> float:
    """Mean |decoded pitch - true pitch| in cents."""
    truth = np.array([data.tone(data.HELDOUT + i)[1] for i in range(len(outputs[0]))])
    return float(np.mean(np.abs(crepe_cents(outputs[0]) - 1200 * np.log2(truth / 10.0))))


def landmark_error(outputs: Outputs, reference: Outputs) -> float:
    """Mean distance in pixels of the 48x48 crop between ONet's five landmarks and the drawn ones,
    over the crops that hold a face."""
    marks = outputs[1]
    errors = []
    for i in range(len(marks)):
        truth = data.face_crop(data.HELDOUT + i)[1]
        if truth is not None:
            found = np.stack([marks[i, :5], marks[i, 5:]], axis=1)  # ONet: five xs, then five ys
            errors.append(np.linalg.norm(found - truth, axis=1).mean() * data.ONET_SIZE)
    return float(np.mean(errors))


def mask_iou(mask: np.ndarray, reference: np.ndarray) -> float:
    """IoU of two boolean masks in percent; 100 when both are empty."""
    union = np.logical_or(mask, reference).sum()
    return 100.0 if union == 0 else float(100.0 * np.logical_and(mask, reference).sum() / union)


def face_map_iou(outputs: Outputs, reference: Outputs) -> float:
    """IoU of PNet's face windows (probability above MTCNN's first threshold) with FP32's."""
    return mask_iou(outputs[1][:, 1] > PNET_THRESHOLD, reference[1][:, 1] > PNET_THRESHOLD)


def text_mask_iou(outputs: Outputs, reference: Outputs) -> float:
    """IoU of the detector's binarized text mask (rapidocr's threshold) with FP32's."""
    return mask_iou(outputs[0] > DB_THRESHOLD, reference[0] > DB_THRESHOLD)


def embedding_cosine(outputs: Outputs, reference: Outputs) -> float:
    """Mean cosine of each embedding with FP32's: what a verification threshold is set on."""
    a, b = outputs[0], reference[0]
    cos = (a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return float(cos.mean())


TASKS: dict[str, Task] = {
    "crepe_tiny": Task("pitch error, cents", True, pitch_error),
    "crepe_full": Task("pitch error, cents", True, pitch_error),
    "mtcnn_onet": Task("landmark error, px", True, landmark_error),
    "mtcnn_pnet": Task("face-map IoU vs FP32, %", False, face_map_iou),
    "speaker_encoder": Task("embedding cosine vs FP32", False, embedding_cosine, digits=5),
    "rapidocr_det": Task("text-mask IoU vs FP32, %", False, text_mask_iou),
    "minilm_l6": Task("embedding cosine vs FP32", False, embedding_cosine, digits=5),
}
