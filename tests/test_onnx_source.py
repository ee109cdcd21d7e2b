"""An ONNX file as the model: ``[model] onnx = "net.onnx"`` runs every stage unchanged after export.

The file is the tiny user model exported elsewhere: by torch's TorchScript exporter at opset 17, its
batch axis named ``N`` (not ``batch``), weights in an external-data file beside it:

    x [N, 3, 8, 8] -> Conv -> Relu -> Conv -> Add -> Relu -> ReduceMean -> Gemm -> logits [N, 4]
"""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
import torch

from pipeline import records, stages
from pipeline.config import load_config
from pipeline.errors import PipelineError
from pipeline.layout import Layout
from tests.conftest import FAST_BENCH, config_text


def _exported_elsewhere(user_model, folder, opset=17, external=True):
    spec = importlib.util.spec_from_file_location("user_net_for_onnx", user_model)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = module.build(channels=16).eval()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "net.onnx"
    torch.onnx.export(
        net,
        (torch.zeros(1, 3, 8, 8),),
        str(path),
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}},
        opset_version=opset,
        dynamo=False,
    )
    if external:
        model = onnx.load(str(path))
        onnx.save(model, str(path), save_as_external_data=True, location="net.onnx.weights", size_threshold=0)
    return path


def _config(tmp_path, user_model, model_block):
    text = config_text(str(user_model), top=f'name = "tiny"\n{FAST_BENCH}', model=model_block)
    path = tmp_path / "tiny.toml"
    path.write_text(text)
    return load_config(path)


def test_an_onnx_file_runs_every_stage(tmp_path, user_model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _exported_elsewhere(user_model, tmp_path / "from_elsewhere")
    cfg = _config(tmp_path, user_model, '[model]\nonnx = "from_elsewhere/net.onnx"')
    assert stages.engines(cfg) == list(stages.NAMES)
    out = Layout.of(cfg)
    fp32 = onnx.load(str(out.graph("fp32")))
    assert next(o.version for o in fp32.opset_import if o.domain in ("", "ai.onnx")) == 19  # upgraded from 17
    assert fp32.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # was "N"
    export = records.load_record(out, "export")
    assert export.inputs["onnx model from_elsewhere/net.onnx"] == records.sha256(path)
    assert export.inputs["onnx external data from_elsewhere/net.onnx.weights"] == records.sha256(
        path.with_name("net.onnx.weights")
    )
    rows = stages.run("compare", cfg)
    assert {r.artifact.split()[0] for r in rows} == {"fp16", "w8a8", "w8a8-cpu"} and not any(r.failures for r in rows)
    # New weights beside the same graph make export stale, as a new checkpoint does.
    weights = path.with_name("net.onnx.weights")
    data = bytearray(weights.read_bytes())
    data[:4] = np.float32(0.5).tobytes()
    weights.write_bytes(bytes(data))
    assert records.rerun_reason(cfg, out, stages.STAGES["export"]).startswith("onnx external data")


def test_the_onnx_graph_is_held_to_the_config(tmp_path, user_model):
    _exported_elsewhere(user_model, tmp_path, external=False)
    cases = {
        'name = "image"\nshape = ["batch", 3, 8, 8]': r"\[\[inputs\]\] are \['image'\], the graph net.onnx has \['x'\]",
        'name = "x"\nshape = ["batch", 3, 9, 8]': r"input 'x' has a dimension of 8 in net.onnx where the config says 9",
        'name = "x"\nshape = ["batch", 3, 8, 8]\ndtype = "float16"': r"input 'x' is float32 in net.onnx, the config",
    }
    for block, message in cases.items():
        text = config_text(str(user_model), model='[model]\nonnx = "net.onnx"', inputs=f"[[inputs]]\n{block}")
        (tmp_path / "bad.toml").write_text(text)
        with pytest.raises(PipelineError, match=message):
            stages.run("export", load_config(tmp_path / "bad.toml"), root=tmp_path)
        assert not (tmp_path / "engines" / "tiny" / "onnx" / "model.fp32.onnx").exists()


def test_weights_outside_the_models_folder_are_refused(tmp_path, user_model):
    path = _exported_elsewhere(user_model, tmp_path / "m")
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../secrets.bin"
    onnx.save(model, str(path))
    cfg = _config(tmp_path, user_model, '[model]\nonnx = "m/net.onnx"')
    with pytest.raises(PipelineError, match=r"outside the model's folder; keep its external data beside it"):
        stages.run("export", cfg, root=tmp_path)


def test_a_newer_opset_than_configured_is_one_line(tmp_path, user_model):
    _exported_elsewhere(user_model, tmp_path, opset=20, external=False)
    cfg = _config(tmp_path, user_model, '[model]\nonnx = "net.onnx"')
    with pytest.raises(PipelineError, match=r"opset 20 is newer than \[export\] opset = 19; set opset = 20"):
        stages.run("export", cfg, root=tmp_path)


def test_a_model_section_names_one_model(tmp_path, user_model):
    text = config_text(str(user_model), model=f'[model]\nonnx = "net.onnx"\nsource = "{user_model}:build"')
    (tmp_path / "both.toml").write_text(text)
    with pytest.raises(PipelineError, match=r"model: needs either source = .* or onnx = 'model.onnx', not both"):
        load_config(tmp_path / "both.toml")


def test_init_writes_a_config_that_runs_every_stage_unedited(tmp_path, user_model, monkeypatch):
    """trtpipe init net.onnx --data DIR -o net.toml, then trtpipe engines -c net.toml (issue 21)."""
    from click.testing import CliRunner

    from pipeline.cli import main

    monkeypatch.chdir(tmp_path)
    _exported_elsewhere(user_model, tmp_path / "model")
    spec = importlib.util.spec_from_file_location("user_net_for_init", user_model)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "data").mkdir()
    for i in range(4):
        np.savez(tmp_path / "data" / f"part{i}.npz", x=module.images(16, 16 * i))
    init = CliRunner().invoke(main, ["init", "model/net.onnx", "--data", "data", "-o", "configs/net.toml"])
    assert init.exit_code == 0, init.output
    text = (tmp_path / "configs" / "net.toml").read_text()
    assert 'onnx = "../model/net.onnx"' in text and 'source = "../data"' in text
    assert "# guessed: axis 0 (N) is the batch" in text
    assert load_config(tmp_path / "configs" / "net.toml").accuracy.budget.min_cosine == 0.99  # the gates, met
    run = CliRunner().invoke(main, ["engines", "-c", "configs/net.toml"])
    assert run.exit_code == 0, run.output
    assert (tmp_path / "engines" / "net" / "reports" / "report.md").is_file()
    again = CliRunner().invoke(main, ["init", "model/net.onnx", "-o", "configs/net.toml"])
    assert again.exit_code == 1 and "exists; trtpipe init writes a new config" in again.output


def test_init_guesses_each_dynamic_axis_from_the_sizes_the_data_comes_in(tmp_path):
    """An ONNX graph open in height and width (as Paddle2ONNX writes RapidOCR's detector):

        x [N, 3, H, W] -> Relu -> y [N, 3, H, W]

    With --data, each open axis' range is the data's (opt its most common size), not a generic
    sequence guess whose min of 1 a downsampling CNN cannot take."""
    from onnx import TensorProto, helper

    from pipeline.starter import AXIS_GUESS, write_starter

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H", "W"])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "open", [x], [y])
    onnx.save(helper.make_model(graph), str(tmp_path / "open.onnx"))
    data = tmp_path / "data"
    data.mkdir()
    for i, height in enumerate((8, 8, 12)):  # one sample per file, as an image
        np.save(data / f"s{i}.npy", np.zeros((3, height, 16), np.float32))
    text = write_starter(str(tmp_path / "open.onnx"), tmp_path / "open.toml", data)
    assert '[[axes]]\nname = "h"\nmin = 8\nopt = 8\nmax = 12\n' in text
    assert '[[axes]]\nname = "w"\nmin = 16\nopt = 16\nmax = 16\n' in text
    assert "the data comes at h 8..12" in text
    blind = write_starter(str(tmp_path / "open.onnx"), tmp_path / "open.toml")  # no data: the generic guess
    assert f'name = "h"\nmin = {AXIS_GUESS[0]}\nopt = {AXIS_GUESS[1]}\nmax = {AXIS_GUESS[2]}\n' in blind


def test_init_names_an_anonymous_dynamic_axis_after_its_tensor(tmp_path):
    """Paddle2ONNX writes "?" for an open axis of RapidOCR's recognizer (x [N, 3, ?, W]): the
    axis is named after its tensor and position, not "_".

        x [N, 3, ?, W] -> Relu -> y [N, 3, ?, W]"""
    from onnx import TensorProto, helper

    from pipeline.starter import write_starter

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "?", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "?", "W"])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "open", [x], [y])
    onnx.save(helper.make_model(graph), str(tmp_path / "rec.onnx"))
    text = write_starter(str(tmp_path / "rec.onnx"), tmp_path / "rec.toml")
    assert 'shape = ["batch", 3, "x_axis2", "w"]' in text
    assert '[[axes]]\nname = "x_axis2"' in text and 'name = "_"' not in text


def test_init_takes_a_dimension_of_minus_one_as_open_and_checks_the_config_loads(tmp_path, monkeypatch):
    """Older Paddle2ONNX writes -1 for an open dimension (RapidOCR's direction classifier: x [-1, 3, ?, ?],
    its output [-1, 2]): the batch, not a size of -1 that no config takes. And init refuses, writing
    nothing, a config its guesses would make that does not load.

        x [-1, 3, ?, ?] -> GlobalAveragePool -> Flatten -> y [-1, 3]"""
    from onnx import TensorProto, helper

    from pipeline import starter

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, "?", "?"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 3])
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])]
    onnx.save(helper.make_model(helper.make_graph(nodes, "cls", [x], [y])), str(tmp_path / "cls.onnx"))
    data = tmp_path / "data"
    data.mkdir()
    np.save(data / "s0.npy", np.zeros((3, 48, 192), np.float32))
    text = starter.write_starter(str(tmp_path / "cls.onnx"), tmp_path / "cls.toml", data)
    assert 'shape = ["batch", 3, "x_axis2", "x_axis3"]' in text and 'shape = ["batch", 3]' in text
    assert "axis 0 (-1) is the batch" in text
    (tmp_path / "cls.toml").write_text(text)
    cfg = load_config(tmp_path / "cls.toml")
    assert [spec.shape for spec in cfg.inputs] == [("batch", 3, "x_axis2", "x_axis3")]
    assert {a.name: (a.min, a.max) for a in cfg.axes} == {"x_axis2": (48, 48), "x_axis3": (192, 192)}

    monkeypatch.setattr(starter, "BATCH_GUESS", (8, 4, 64))  # a guess the schema refuses: min above opt
    with pytest.raises(PipelineError, match=r"trtpipe init .*cls.onnx: the config it would write does not load \("):
        starter.write_starter(str(tmp_path / "cls.onnx"), tmp_path / "other.toml", data)
    assert not (tmp_path / "other.toml").exists()


def test_weights_written_as_constant_nodes_are_read_as_initializers(tmp_path, user_model, capsys):
    """The tiny model's file with every weight a nameless Constant node, as Paddle2ONNX writes them
    (RapidOCR's models): export reads them as initializers, same values (parity holds), so the
    quantized graphs carry int8 weights as they do from the file with initializers.

        Constant (conv.w, ...) ─► Conv ─► ... ─► Gemm ─► logits"""
    path = _exported_elsewhere(user_model, tmp_path / "paddle", external=False)
    model = onnx.load(str(path))
    constants = [onnx.helper.make_node("Constant", [], [t.name], value=t) for t in model.graph.initializer]
    del model.graph.initializer[:]
    nodes = [*constants, *model.graph.node]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(path))
    cfg = _config(tmp_path, user_model, '[model]\nonnx = "paddle/net.onnx"')
    stages.run("export", cfg, root=tmp_path)
    assert "Constant node(s) of net.onnx read as initializers" in capsys.readouterr().err  # and the upgrade's
    out = Layout.of(cfg, tmp_path)
    fp32 = onnx.load(str(out.graph("fp32")))
    assert not [n for n in fp32.graph.node if n.op_type == "Constant"] and len(fp32.graph.initializer) >= 4
    stages.run("quantize", cfg, root=tmp_path)
    w8a8 = onnx.load(str(out.graph("w8a8")))
    int8 = [i.name for i in w8a8.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) > 1]
    assert len(int8) == 2  # both Convs' weights (the Gemm, 4 outputs, stays FP16: too small to gain)
