"""A fast slice of the model zoo (make zoo): small models in the style of its families, on CPU,
through export -> quantize -> compare. Torch only: make test installs no torchvision,
timm or transformers, so the models are written here at a small input size.

- ``mobile``: a MobileNetV3-style net (depthwise convs, squeeze-excite, hardswish, BatchNorm
  with warmed statistics), one image input, logits out;
- ``encoder``: a BERT-style encoder fed ``input_ids`` and ``attention_mask`` (int64), returning
  a dict ``{"last_hidden_state", "pooler_output"}`` as transformers models do.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from pipeline import stages
from pipeline.config import load_config
from pipeline.layout import Layout

MODELS = textwrap.dedent(
    """
    import numpy as np
    import torch
    from torch import nn


    class SqueezeExcite(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.fc1 = nn.Conv2d(c, c // 4, 1)
            self.fc2 = nn.Conv2d(c // 4, c, 1)

        def forward(self, x):
            s = x.mean((2, 3), keepdim=True)
            return x * nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(s))))


    class InvertedResidual(nn.Module):
        def __init__(self, c_in, c_out, expand, stride):
            super().__init__()
            mid = c_in * expand
            self.block = nn.Sequential(
                nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.Hardswish(),
                nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.Hardswish(),
                SqueezeExcite(mid),
                nn.Conv2d(mid, c_out, 1, bias=False), nn.BatchNorm2d(c_out),
            )
            self.residual = stride == 1 and c_in == c_out

        def forward(self, x):
            y = self.block(x)
            return x + y if self.residual else y


    class TinyMobileNet(nn.Module):
        def __init__(self, classes=10):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
            self.blocks = nn.Sequential(
                InvertedResidual(16, 24, 4, 2), InvertedResidual(24, 24, 3, 1), InvertedResidual(24, 40, 3, 2)
            )
            self.head = nn.Sequential(nn.Linear(40, 128), nn.Hardswish(), nn.Linear(128, classes))

        def forward(self, x):
            return self.head(self.blocks(self.stem(x)).mean((2, 3)))


    class EncoderLayer(nn.Module):
        def __init__(self, dim, heads):
            super().__init__()
            self.heads = heads
            self.qkv = nn.Linear(dim, 3 * dim)
            self.proj = nn.Linear(dim, dim)
            self.norm1 = nn.LayerNorm(dim)
            self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
            self.norm2 = nn.LayerNorm(dim)

        def forward(self, h, bias):
            b, t, d = h.shape
            q, k, v = self.qkv(h).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            att = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5 + bias, dim=-1)
            h = self.norm1(h + self.proj((att @ v).transpose(1, 2).reshape(b, t, d)))
            return self.norm2(h + self.ffn(h))


    class TinyBert(nn.Module):
        def __init__(self, vocab=1000, seq=16, dim=64, heads=4, layers=2):
            super().__init__()
            self.tokens = nn.Embedding(vocab, dim)
            self.positions = nn.Parameter(torch.randn(1, seq, dim) * 0.02)
            self.norm = nn.LayerNorm(dim)
            self.layers = nn.ModuleList(EncoderLayer(dim, heads) for _ in range(layers))
            self.pooler = nn.Linear(dim, dim)

        def forward(self, input_ids, attention_mask):
            h = self.norm(self.tokens(input_ids) + self.positions)
            bias = (1.0 - attention_mask[:, None, None, :].to(h.dtype)) * -10000.0  # padding gets no attention
            for layer in self.layers:
                h = layer(h, bias)
            return {"last_hidden_state": h, "pooler_output": torch.tanh(self.pooler(h[:, 0]))}


    def mobile():
        torch.manual_seed(0)
        net = TinyMobileNet()
        net.train()  # warm BatchNorm statistics, as after training
        with torch.no_grad():
            for i in range(2):
                net(torch.from_numpy(images(8, 1000 + 8 * i)))
        return net.eval()


    def encoder():
        torch.manual_seed(0)
        return TinyBert().eval()


    def images(n, offset):
        rng = np.random.default_rng(offset)
        grid = np.linspace(0, 1, 32, dtype=np.float32)
        f = rng.uniform(0.5, 4, (n, 3, 1, 1)).astype(np.float32)
        return np.sin(2 * np.pi * f * (grid[:, None] + grid[None, :])).astype(np.float32)


    def image_batches(samples, batch_size):
        for start in range(0, samples, batch_size):
            yield {"x": images(min(batch_size, samples - start), start)}


    def token_batches(samples, batch_size):
        for start in range(0, samples, batch_size):
            n = min(batch_size, samples - start)
            rng = np.random.default_rng(start)
            ids = rng.integers(5, 1000, (n, 16)).astype(np.int64)
            mask = (np.arange(16)[None, :] < rng.integers(4, 17, (n, 1))).astype(np.int64)
            yield {"input_ids": ids * mask, "attention_mask": mask}
    """
)

COMMON = """
[batch]
min = 1
opt = 8
max = 32

[accuracy]
batches = [8]
"""

CONFIGS = {
    "mobile": """
name = "slice_mobile"
[model]
source = "models.py:mobile"
[[inputs]]
name = "x"
shape = ["batch", 3, 32, 32]
dtype = "float32"
[[outputs]]
name = "logits"
shape = ["batch", 10]
dtype = "float32"
[calibration]
source = "models.py:image_batches"
samples = 32
batch_size = 8
""",
    "encoder": """
name = "slice_encoder"
[model]
source = "models.py:encoder"
[[inputs]]
name = "input_ids"
shape = ["batch", 16]
dtype = "int64"
[[inputs]]
name = "attention_mask"
shape = ["batch", 16]
dtype = "int64"
[[outputs]]
name = "last_hidden_state"
shape = ["batch", 16, 64]
dtype = "float32"
[[outputs]]
name = "pooler_output"
shape = ["batch", 64]
dtype = "float32"
[calibration]
source = "models.py:token_batches"
samples = 32
batch_size = 8
""",
}


def run_slice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: str) -> dict:
    """Export, quantize (calibrating) and compare on ONNX Runtime; compare.json's content."""
    (tmp_path / "models.py").write_text(MODELS)
    path = tmp_path / f"{model}.toml"
    path.write_text(CONFIGS[model] + COMMON)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(path)
    stages.run("export", cfg)
    stages.run("quantize", cfg)
    stages.run("build", cfg, backend="onnxruntime")
    stages.run("compare", cfg)
    return json.loads((Layout.of(cfg).results_dir / "compare.json").read_text())


def check_compared(result: dict, outputs: set[str]) -> None:
    assert result["passed"]
    artifacts = {row["artifact"].split(" ")[0] for row in result["rows"]}
    assert artifacts == {"fp16", "w8a8", "w8a8-cpu"}
    assert {row["output"] for row in result["rows"]} == outputs
    for row in result["rows"]:
        assert row["cosine"] > 0.99, row


def test_mobilenet_style(tmp_path, monkeypatch):
    check_compared(run_slice(tmp_path, monkeypatch, "mobile"), {"logits"})


def test_bert_style_two_inputs_dict_output(tmp_path, monkeypatch):
    check_compared(run_slice(tmp_path, monkeypatch, "encoder"), {"last_hidden_state", "pooler_output"})


def test_driver_runs_on_past_a_missed_quantize_gate(make_config, tmp_path, monkeypatch):
    """Random-weight zoo nets miss quantize's gates: the driver's quantize writes the graphs anyway,
    reads "gate failed" (with the gate's line), and build, which needs quantize, still runs."""
    from benchmarks.zoo.driver import run_stage

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parents[1]))  # the stages run this checkout's code
    cfg = make_config(top='name = "tiny"\n[accuracy.w8a8]\nmin_cosine = 0.999999')
    stages.run("export", cfg)
    logs = tmp_path / "logs"
    logs.mkdir()
    run = run_stage("quantize", cfg.path, tmp_path, logs / "quantize.log", timeout=600)
    assert run.status == "gate failed" and run.error.startswith("tiny: accuracy gate failed for w8a8")
    assert Layout.of(cfg).graph("w8a8").is_file()
    assert run_stage("build", cfg.path, tmp_path, logs / "build.log", timeout=600).status == "ok"
