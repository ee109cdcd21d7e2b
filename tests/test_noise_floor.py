"""``benchmarks.noise_floor``: FP32 against itself with input noise of int8 steps."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.noise_floor import int8_steps, noise_floor
from tests import graphs


def test_int8_steps_are_each_float_inputs_largest_magnitude_over_127():
    feeds = [{"x": np.array([[0.5, -2.54]], np.float32), "ids": np.array([[7]], np.int64)}]
    feeds.append({"x": np.array([[1.0, 0.0]], np.float32), "ids": np.array([[9]], np.int64)})
    assert int8_steps(feeds) == pytest.approx({"x": 0.02})  # token ids get no noise


def test_the_floor_is_exact_without_noise_and_a_linear_graph_moves_in_proportion_to_it():
    model = graphs.linear_conv()
    feeds = [graphs.inputs_for(model, 4, seed) for seed in range(3)]
    found = {level: stats[0] for level, shape, stats in noise_floor(model, feeds, (0.0, 1.0, 2.0))}
    assert [shape for _, shape, _ in noise_floor(model, feeds, (0.0,))] == ["16x8x8"]
    assert found[0.0].centered_cosine == pytest.approx(1.0, abs=1e-12) and found[0.0].max_abs == 0.0
    assert 0 < found[1.0].rel_error < found[2.0].rel_error
    assert found[2.0].rel_error == pytest.approx(2 * found[1.0].rel_error, rel=1e-3)  # the same draw, scaled
    assert found[2.0].centered_cosine < found[1.0].centered_cosine < 1.0
