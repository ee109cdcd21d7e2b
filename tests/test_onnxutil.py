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


def test_lean_shape_inference_matches_the_full_one_without_weight_data():
    model = graphs.reshape_transpose()  # Reshape reads a constant shape: small initializers keep their data
    lean = onnxutil.infer_shapes_lean(model)
    full = onnx.shape_inference.infer_shapes(model)
    assert list(lean.graph.value_info) == list(full.graph.value_info)
    weights = {i.name: i for i in lean.graph.initializer}
    assert list(weights["conv.w"].dims) == [16, 16, 3, 3] and not weights["conv.w"].raw_data
    assert onnx.numpy_helper.to_array(weights["shape"]).tolist() == [0, 16, 64]


def test_copy_with_outputs_adds_outputs_without_parsing_the_graph(tmp_path):
    model = graphs.residual()
    src = onnxutil.save(model, tmp_path / "m.onnx")
    extra = [v for v in model.graph.value_info if v.name in ("r1", "c2")]
    dst = onnxutil.copy_with_outputs(src, tmp_path / "aug.onnx", extra)
    assert [o.name for o in onnx.load(str(dst)).graph.output] == ["y", "r1", "c2"]
    sess = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    y, r1, c2 = sess.run(None, graphs.inputs_for(model, 2))
    assert r1.shape == c2.shape == (2, 16, 8, 8) and r1.min() >= 0.0
    assert onnx.load(str(src)).graph.output[0].name == "y" and len(onnx.load(str(src)).graph.output) == 1


def test_the_check_types_a_graph_as_inference_does_and_rejects_what_the_checker_does():
    """``check`` runs the checker and shape inference without the weights' data: the types it writes
    are those of shape inference on the whole graph, and a weight of the wrong type or an unknown op
    is still refused in one line."""
    import pytest

    from pipeline.errors import PipelineError

    model = graphs.attention()
    del model.graph.value_info[:]
    whole = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    checked = onnxutil.check(model, "attention")
    assert checked is model and len(model.graph.value_info) > 5
    assert [str(v) for v in checked.graph.value_info] == [str(v) for v in whole.graph.value_info]
    wrong_type = onnx.ModelProto()
    wrong_type.CopyFrom(model)
    weight = wrong_type.graph.initializer[0]
    weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight).astype(np.float64), weight.name))
    unknown = onnx.ModelProto()
    unknown.CopyFrom(model)
    unknown.graph.node[0].op_type = "NoSuchOp"
    for bad in (wrong_type, unknown):
        with pytest.raises(PipelineError, match="^attention: the ONNX checker rejected the graph: "):
            onnxutil.check(bad, "attention")


def test_metadata_of_an_unreadable_file_is_one_line(tmp_path):
    """A file whose metadata entry is cut short, or holding no ONNX wire format, is refused by name."""
    import pytest

    from pipeline.errors import PipelineError

    cut = tmp_path / "cut.onnx"
    cut.write_bytes(b"\x72\x05\x0a\x03ab")  # field 14 (metadata_props), 5 bytes promised, a string cut short
    wrong = tmp_path / "wrong.onnx"
    wrong.write_bytes(b"\x0e")  # wire type 6: none of protobuf's
    for path in (cut, wrong):
        with pytest.raises(PipelineError, match=f"^{path}: not a readable ONNX file"):
            onnxutil.metadata(path)
