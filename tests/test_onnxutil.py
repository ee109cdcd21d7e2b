"""Saving graphs: atomic, and with external data when a graph nears protobuf's 2 GB limit."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from pipeline import onnxutil
from tests import graphs


def test_large_graphs_keep_weights_in_a_data_file(tmp_path, monkeypatch):
    monkeypatch.setattr(onnxutil, "_EXTERNAL_DATA_THRESHOLD", 0)  # treat this graph as "large"
    model = graphs.residual()
    path = onnxutil.save(model, tmp_path / "model.fp32.onnx")
    assert (tmp_path / "model.fp32.onnx.data").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.fp32.onnx", "model.fp32.onnx.data"]  # no temp files
    x = graphs.inputs_for(model, 2)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)[0]
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, x)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    onnx.checker.check_model(str(path), full_check=True)


def test_small_graphs_are_one_file(tmp_path):
    onnxutil.save(graphs.residual(), tmp_path / "m.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
