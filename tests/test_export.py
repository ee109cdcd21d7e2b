"""Export stage: a user model file outside the package, and each user mistake as one line."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from pipeline import stages
from pipeline.cli import main
from pipeline.errors import PipelineError
from pipeline.layout import Layout
from tests.conftest import write_config


def test_outside_model_exports_with_dynamic_batch_and_parity(make_config, tmp_path):
    cfg = make_config()
    assert cfg.export.parity_batches == (1, 7)  # 7 is not the profile's opt (8)
    rows = stages.run("export", cfg, root=tmp_path)
    assert {(r.precision, r.batch) for r in rows} == {("fp32", 1), ("fp32", 7), ("fp16", 1), ("fp16", 7)}
    out = Layout.of(cfg, tmp_path)
    fp32 = onnx.load(out.graph("fp32"))
    fp16 = onnx.load(out.graph("fp16"))
    assert fp32.opset_import[0].version >= 19
    assert fp32.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    # FP16 graph: fp32 I/O by default, FP16 weights inside.
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    weight_types = {i.data_type for i in fp16.graph.initializer if len(i.dims) > 1}
    assert weight_types == {onnx.TensorProto.FLOAT16}
    # Really dynamic: ONNX Runtime runs both graphs at a batch size seen nowhere in export.
    x = np.random.default_rng(0).standard_normal((13, 3, 8, 8)).astype(np.float32)
    for path in (out.graph("fp32"), out.graph("fp16")):
        y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        assert y.shape == (13, 4)


def test_fp16_io_dtype_is_configurable(make_config, tmp_path):
    cfg = make_config(top='name = "tiny"\n[export]\nio_dtype = "float16"')
    stages.run("export", cfg, root=tmp_path)
    fp16 = onnx.load(Layout.of(cfg, tmp_path).graph("fp16"))
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert fp16.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def _one_line_error(cfg, tmp_path) -> str:
    with pytest.raises(PipelineError) as info:
        stages.run("export", cfg, root=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert not Layout.of(cfg, tmp_path).graph("fp32").exists()  # nothing half-written
    return message


def test_source_that_does_not_exist(make_config, tmp_path):
    cfg = make_config(model='[model]\nsource = "/no/such/dir/net.py:build"')
    assert "file /no/such/dir/net.py does not exist" in _one_line_error(cfg, tmp_path)
    cfg = make_config(model='[model]\nsource = "no_such_package.net:build"')
    assert "cannot import module 'no_such_package.net'" in _one_line_error(cfg, tmp_path)


def test_model_output_not_matching_config(make_config, tmp_path):
    cfg = make_config(outputs='[[outputs]]\nname = "logits"\nshape = ["batch", 12]\ndtype = "float32"')
    msg = _one_line_error(cfg, tmp_path)
    assert "output 'logits' has shape [2, 4]" in msg and "['batch', 12]" in msg


def test_truncated_weights_file(make_config, user_model, tmp_path):
    weights = tmp_path / "net.pt"
    torch.save(__import__("importlib").import_module("torch").nn.Conv2d(1, 1, 1).state_dict(), weights)
    weights.write_bytes(weights.read_bytes()[:100])
    cfg = make_config(model=f'[model]\nsource = "{user_model}:build"\nweights = "{weights}"')
    msg = _one_line_error(cfg, tmp_path)
    assert str(weights) in msg and "truncated, corrupt" in msg


def test_weights_for_another_model(make_config, user_model, tmp_path):
    weights = tmp_path / "other.pt"
    torch.save(torch.nn.Conv2d(1, 1, 1).state_dict(), weights)
    cfg = make_config(model=f'[model]\nsource = "{user_model}:build"\nweights = "{weights}"')
    assert "weights do not match" in _one_line_error(cfg, tmp_path)


def test_weights_for_another_width(make_config, user_model, tmp_path):
    """Same layers, other [model.args]: one line naming the tensor and both shapes, not torch's traceback."""
    weights = tmp_path / "wide.pt"
    net = __import__("importlib").import_module("runpy").run_path(str(user_model))["build"](channels=32)
    torch.save(net.state_dict(), weights)
    cfg = make_config(model=f'[model]\nsource = "{user_model}:build"\nweights = "{weights}"')
    msg = _one_line_error(cfg, tmp_path)
    assert "conv1.weight (32, 3, 3, 3) vs (16, 3, 3, 3)" in msg and "check [model.args]" in msg


def test_input_the_model_does_not_take(make_config, tmp_path):
    cfg = make_config(
        inputs='[[inputs]]\nname = "x"\nshape = ["batch", 3, 8, 8]\n\n[[inputs]]\nname = "mask"\nshape = ["batch", 8]'
    )
    msg = _one_line_error(cfg, tmp_path)
    assert "Net.forward(x) has no parameter 'mask'" in msg


def test_data_with_wrong_dtype(tmp_path, user_model):
    (user_model.parent / "data64.py").write_text(
        "import numpy as np\n"
        "def heldout(batch_size):\n"
        "    yield {'x': np.zeros((batch_size, 3, 8, 8))}, np.zeros(batch_size)\n"
    )
    from pipeline.config import load_config

    cfg = load_config(
        write_config(tmp_path, user_model, evaluation=f'[evaluation]\nsource = "{user_model.parent}/data64.py:heldout"')
    )
    msg = _one_line_error(cfg, tmp_path)
    assert "tensor 'x' has dtype float64, the config says float32" in msg


def test_cli_shows_user_errors_as_one_line(tmp_path, user_model):
    path = write_config(tmp_path, user_model, model='[model]\nsource = "/no/such/net.py:build"')
    result = CliRunner().invoke(main, ["export", "-c", str(path)])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == ["Error: model.source: file /no/such/net.py does not exist"]
    assert result.exc_info[0] is SystemExit  # no traceback: a user error, not a crash


def test_importing_the_users_model_writes_no_bytecode_beside_it(tmp_path, user_model, monkeypatch):
    """__pycache__/ beside the user's net.py is a write outside engines/ and calib/ (issue 23, item 10)."""
    import sys

    from pipeline.callables import load_callable

    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # as a user's Python runs, unlike this suite's CI
    (tmp_path / "zoo_pkg").mkdir()
    (tmp_path / "zoo_pkg" / "__init__.py").write_text("")
    (tmp_path / "zoo_pkg" / "nets.py").write_text("def build():\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    load_callable(f"{user_model}:build", tmp_path, "model.source")
    load_callable("zoo_pkg.nets:build", tmp_path, "model.source")
    assert not list(tmp_path.rglob("__pycache__"))
    assert sys.dont_write_bytecode is False
