"""Export of models as users write them: inputs bound by name, dict outputs, exporter fallback."""

from __future__ import annotations

import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from pipeline import onnxutil, stages
from pipeline.config import load_config
from pipeline.errors import PipelineError
from pipeline.layout import Layout

# Two inputs of the same shape, so a swapped bind would still run and only the numbers tell.
TWO_INPUTS = textwrap.dedent(
    """
    import numpy as np
    import torch
    from torch import nn

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.proj = nn.Linear(8, 8)

        def forward(self, query, key, *, scale: float = 2.0):
            h = self.proj(query) - scale * key
            return {"hidden": h, "pooled": h.mean(1), "unused": key.sum()}

    class Images(nn.Module):  # what torchvision-style models look like: forward(self, x)
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 16, 3, padding=1)

        def forward(self, x):
            return torch.relu(self.conv(x)).mean((2, 3))

    class Traps(nn.Module):  # torch.export cannot take it; the TorchScript exporter can
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 4)
            self.drop = nn.Dropout(0.5)  # must stay off through the export (T5 has dropout)

        def forward(self, x):
            if torch.compiler.is_exporting():
                raise RuntimeError("no torch.export for this model")
            return self.drop(self.lin(x))

    class Refuses(Traps):  # no exporter can take it
        def forward(self, x):
            if torch.compiler.is_exporting() or torch.jit.is_tracing():
                raise RuntimeError("this model refuses to be traced")
            return self.lin(x)

    def rows(n, offset, width):
        i = np.arange(offset, offset + n, dtype=np.float32)[:, None, None]
        j = np.arange(width, dtype=np.float32)[None, None, :]
        return np.sin(0.1 * i + 0.3 * j + np.zeros((1, 4, 1), np.float32))

    def pairs(samples, batch_size):
        for start in range(0, samples, batch_size):
            n = min(batch_size, samples - start)
            yield {"key": rows(n, start, 8), "query": rows(n, start + 500, 8)}

    def images(samples, batch_size):
        for start in range(0, samples, batch_size):
            n = min(batch_size, samples - start)
            yield {"images": np.cos(0.2 * rows(n, start, 8)[:, :3, None, :] * np.arange(8)[None, None, :, None])
                   .astype(np.float32)}

    def vectors(samples, batch_size):
        for start in range(0, samples, batch_size):
            yield {"x": rows(min(batch_size, samples - start), start, 8)[:, 0, :]}
    """
)


def _config(tmp_path, model_file, build: str, inputs: str, outputs: str, data: str):
    path = tmp_path / "cfg.toml"
    path.write_text(
        f'name = "bound"\n[model]\nsource = "{model_file}:{build}"\n{inputs}\n{outputs}\n'
        f"[batch]\nmin = 1\nopt = 4\nmax = 16\n"
        f'[calibration]\nsource = "{model_file}:{data}"\nsamples = 16\nbatch_size = 8\n'
    )
    return load_config(path)


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "models.py"
    path.write_text(TWO_INPUTS)
    return path


SEQ_INPUTS = '[[inputs]]\nname = "{a}"\nshape = ["batch", 4, 8]\n[[inputs]]\nname = "{b}"\nshape = ["batch", 4, 8]'


def test_inputs_bind_by_name_whatever_their_order_and_dict_outputs_by_key(tmp_path, model_file):
    outputs = (
        '[[outputs]]\nname = "pooled"\nshape = ["batch", 8]\n[[outputs]]\nname = "hidden"\nshape = ["batch", 4, 8]'
    )
    cfg = _config(tmp_path, model_file, "Pair", SEQ_INPUTS.format(a="key", b="query"), outputs, "pairs")
    rows = stages.run("export", cfg, root=tmp_path)
    assert {(r.precision, r.batch) for r in rows} >= {("fp32", 1), ("fp32", 7)}
    path = Layout.of(cfg, tmp_path).graph("fp32")
    graph = onnx.load(path)
    assert [i.name for i in graph.graph.input] == ["key", "query"]
    assert [o.name for o in graph.graph.output] == ["pooled", "hidden"]
    # The numbers of a by-name call, not of a positional one (key and query have the same shape).
    rng = np.random.default_rng(0)
    key, query = (rng.standard_normal((3, 4, 8)).astype(np.float32) for _ in range(2))
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"key": key, "query": query})
    module = __import__("runpy").run_path(str(model_file))["Pair"]()
    want = module(query=torch.from_numpy(query), key=torch.from_numpy(key))
    np.testing.assert_allclose(got[1], want["hidden"].detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(got[0], want["pooled"].detach().numpy(), atol=1e-5)


def test_one_input_binds_to_the_one_parameter_whatever_its_name(tmp_path, model_file):
    cfg = _config(
        tmp_path,
        model_file,
        "Images",
        '[[inputs]]\nname = "images"\nshape = ["batch", 3, 8, 8]',
        '[[outputs]]\nname = "features"\nshape = ["batch", 16]',
        "images",
    )
    rows = stages.run("export", cfg, root=tmp_path)
    assert {r.batch for r in rows} == {1, 7} and not any(r.failures for r in rows)
    graph = onnx.load(Layout.of(cfg, tmp_path).graph("fp32"))
    assert [i.name for i in graph.graph.input] == ["images"]
    assert onnxutil.exporter(graph) == "torch.export"


def test_a_misnamed_input_of_two_is_one_line_naming_both_sides(tmp_path, model_file):
    outputs = '[[outputs]]\nname = "pooled"\nshape = ["batch", 8]'
    cfg = _config(tmp_path, model_file, "Pair", SEQ_INPUTS.format(a="keys", b="query"), outputs, "pairs")
    with pytest.raises(PipelineError, match=r"Pair.forward\(query, key, scale\) has no parameter 'keys'"):
        stages.run("export", cfg, root=tmp_path)
    assert not Layout.of(cfg, tmp_path).graph("fp32").exists()


def test_a_dict_output_the_config_misnames(tmp_path, model_file):
    outputs = '[[outputs]]\nname = "pool"\nshape = ["batch", 8]'
    cfg = _config(tmp_path, model_file, "Pair", SEQ_INPUTS.format(a="key", b="query"), outputs, "pairs")
    with pytest.raises(PipelineError, match=r"dict without 'pool' \(keys: hidden, pooled, unused\)"):
        stages.run("export", cfg, root=tmp_path)


VECTOR = ('[[inputs]]\nname = "x"\nshape = ["batch", 8]', '[[outputs]]\nname = "y"\nshape = ["batch", 4]', "vectors")


def test_torchscript_exporter_takes_over_where_torch_export_fails(tmp_path, model_file, capfd):
    cfg = _config(tmp_path, model_file, "Traps", *VECTOR)
    rows = stages.run("export", cfg, root=tmp_path)
    assert not any(r.failures for r in rows)
    out = Layout.of(cfg, tmp_path)
    assert onnxutil.exporter(onnx.load(out.graph("fp32"))) == "torchscript"
    err = capfd.readouterr().err
    assert "torch.export: RuntimeError: no torch.export for this model; exported with the torchscript exporter" in err
    log = out.log("export").read_text()
    assert "===== torch.export: FAILED" in log and "===== torchscript: ok" in log


def test_export_failure_is_torchs_cause_and_the_log_path(tmp_path, model_file):
    cfg = _config(tmp_path, model_file, "Refuses", *VECTOR)
    with pytest.raises(PipelineError) as info:
        stages.run("export", cfg, root=tmp_path)
    message = str(info.value)
    out = Layout.of(cfg, tmp_path)
    assert "\n" not in message and "step 1/3" not in message
    assert "torch.export: RuntimeError: this model refuses to be traced" in message
    assert "torchscript: RuntimeError: this model refuses to be traced" in message
    assert f"full log: {out.log('export')}" in message
    assert "Traceback" in out.log("export").read_text()
    assert not out.graph("fp32").exists() and not out.graph("fp16").exists()
