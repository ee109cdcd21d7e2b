"""Error statistics on the output's own scale, streamed or whole, and top-1 agreement that skips near-ties."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import Gate
from pipeline.evaluate.metrics import ErrorAccumulator, error_stats, gate_failures, top1_agreement


def test_streamed_statistics_equal_the_whole():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((37, 5, 3)) + 4.0
    out = ref + 0.05 * rng.standard_normal(ref.shape)
    whole = error_stats(out, ref)
    acc = ErrorAccumulator()
    for start in range(0, 37, 8):  # ragged last batch
        acc.update(out[start : start + 8], ref[start : start + 8])
    streamed = acc.result()
    for name, value in whole.as_dict().items():
        assert getattr(streamed, name) == pytest.approx(value, rel=1e-9, abs=1e-12), name


def test_centered_cosine_sees_loss_a_shared_constant_part_hides():
    """Every row shares a big constant part; the output keeps it but loses how rows differ."""
    rng = np.random.default_rng(1)
    shared = 50.0 * rng.standard_normal(10)
    signal = rng.standard_normal((64, 10))
    ref = shared + signal
    out = shared + 0.3 * signal + rng.standard_normal((64, 10))  # variation mostly replaced by noise
    stats = error_stats(out, ref)
    assert stats.cosine > 0.99  # raw cosine calls this fine
    assert stats.centered_cosine < 0.5 and stats.rel_error > 0.9
    assert any("centered cosine" in f for f in gate_failures(stats, Gate(min_cosine=0.99)))
    assert any("relative error" in f for f in gate_failures(stats, Gate(min_cosine=0.0, max_rel_error=0.05)))
    exact = error_stats(ref, ref)
    assert exact.centered_cosine == pytest.approx(1.0) and exact.rel_error == 0.0


def test_one_row_falls_back_to_raw_cosine_and_norm():
    ref = np.array([[3.0, 4.0]])
    stats = error_stats(ref * 1.1, ref)
    assert stats.centered_cosine == stats.cosine == pytest.approx(1.0)
    assert stats.rel_error == pytest.approx(0.1)


def test_agreement_is_judged_on_decisive_rows_only():
    rng = np.random.default_rng(2)
    ref = rng.standard_normal((40, 10))
    ref[:20, 0] = ref[:20].max(axis=1) + 2.0  # 20 decisive rows: class 0 leads by far
    ref[20:, 1] = ref[20:, 2] = ref[20:].max(axis=1) + 1.0  # 20 near-ties between classes 1 and 2
    ref[20:, 2] += 1e-4
    out = ref.copy()
    out[20:, 1] += 2e-4  # rounding flips every near-tie
    assert np.mean(np.argmax(out, 1) == np.argmax(ref, 1)) == 0.5
    assert top1_agreement(out, ref) == 1.0
    out[:2, 0] -= 10.0  # two decisive rows really change class
    assert top1_agreement(out, ref) == pytest.approx(0.9)
    assert top1_agreement(out[20:], ref[20:]) is None  # only near-ties: nothing to judge


def test_a_gate_judges_agreement_only_on_enough_decisive_rows_that_one_flip_alone_passes():
    """MobileNetV4 (10 of 11 decisive rows) and PoolFormerV2 (11 of 12) failed a 0.97 gate on one
    flipped row: that gate allows 3 flips in 100, so it needs 34 rows before one flip can be judged."""
    from pipeline.config import Gate
    from pipeline.evaluate.metrics import Agreement, decisive_rows_needed

    assert decisive_rows_needed(0.97) == 34 and decisive_rows_needed(0.99) == 100
    assert decisive_rows_needed(0.5) == 10 and decisive_rows_needed(1.0) == 10  # never under the floor
    gate = Gate(min_cosine=0.0, min_top1_agreement=0.97)
    stats = error_stats(np.ones((4, 3)), np.ones((4, 3)))

    def failures(rows: int, flipped: int) -> list[str]:
        ref = np.tile(np.array([5.0, 0.0, 0.0]), (rows, 1))  # every row decisive: class 0 leads
        out = ref.copy()
        out[:flipped, 1] = 10.0
        agreement = Agreement().update(out, ref)
        return gate_failures(stats, gate, agreement.result(), decisive=agreement.decisive)

    assert failures(12, 1) == []  # 11 of 12: too few rows for one flip to mean something
    assert failures(33, 1) == []
    assert failures(34, 2) == ["top-1 agreement 0.9412 < 0.97 (34 decisive rows)"]
    assert failures(34, 1) == []  # 33 of 34 = 0.9706
    assert failures(100, 4) == ["top-1 agreement 0.9600 < 0.97 (100 decisive rows)"]


def test_an_output_that_hardly_varies_is_judged_raw():
    """Rows differ by 1e-5 of the output: FP16-level noise would swamp a centered comparison."""
    rng = np.random.default_rng(3)
    ref = 1.0 + 1e-5 * rng.standard_normal((16, 10))
    out = ref + 1e-5 * rng.standard_normal(ref.shape)
    stats = error_stats(out, ref)
    assert stats.centered_cosine == stats.cosine > 0.9999
    assert stats.rel_error < 1e-4


def test_error_stats_folded_in_blocks_of_rows_are_the_stats_of_the_whole_batch(monkeypatch):
    """A batch is folded a block of rows at a time (a segmentation net's outputs, whole in float64,
    would take several times what inference holds): blocks of one row give the same figures."""
    from pipeline.evaluate import metrics

    rng = np.random.default_rng(3)
    ref = rng.standard_normal((6, 3, 5)).astype(np.float32) + 2.0
    out = ref + 0.05 * rng.standard_normal(ref.shape).astype(np.float32)
    whole = metrics.ErrorAccumulator().update(out, ref).result()
    monkeypatch.setattr(metrics, "BLOCK_VALUES", 15)  # one row of 3x5 values per block
    blocks = metrics.ErrorAccumulator().update(out, ref)
    assert blocks.rows == 6 and blocks.sum_ref.shape == (15,)
    for name, value in whole.__dict__.items():
        assert getattr(blocks.result(), name) == pytest.approx(value, rel=1e-12), name
