"""On a machine with TensorRT and a CUDA GPU: build the example models' engines, check INT8 coverage and parity.

Run with ``make gpu-check``. Elsewhere these skip with the probe's reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from pipeline import stages
from pipeline.config import load_config
from pipeline.data import sample_inputs
from pipeline.evaluate.metrics import error_stats, top1_agreement
from pipeline.layout import Layout
from pipeline.runners import artifacts, reference_runner, runner_for
from pipeline.targets.tensorrt.layers import quantized_compute_node_names
from pipeline.targets.tensorrt.manifest import Manifest

pytestmark = pytest.mark.gpu


# The examples: the ViT's attention GEMMs run inside Myelin-fused layers (gemm, kgen, ForeignNode),
# which the coverage counts through each layer's ONNX-node metadata: its input precision, or the Q/DQ
# it swallowed (its inputs report Half, NVIDIA/TensorRT#4397); the
# hard example (the ViT with outlier channels) is quantized with SmoothQuant, as its config says.
@pytest.mark.parametrize(
    ("model", "min_int8_coverage"), [("resnet_digits", 0.90), ("vit_digits", 0.90), ("vit_outliers_digits", 0.90)]
)
def test_example_engines(model, min_int8_coverage, tmp_path):
    cfg = load_config(f"models/{model}.toml")
    stages.run("export", cfg, root=tmp_path)
    stages.run("quantize", cfg, root=tmp_path)
    record = stages.run("build", cfg, root=tmp_path, backend="tensorrt")
    manifest = Manifest.load(Path(record.engines.manifest))
    assert set(manifest.engines) == {"fp16", "w8a8"}
    out = Layout.of(cfg, tmp_path)
    layers = record.engines.layers["w8a8"]
    # Of the layers the Q/DQ graph quantizes, the share TensorRT really runs in INT8.
    assert layers.by_onnx_node, "TensorRT 11's inspector gave no layer metadata: coverage is a guess"
    assert layers.undetermined is None, (layers.undetermined, Path(record.engines.dir) / "layers-w8a8.json")
    assert layers.quantized_layers == len(quantized_compute_node_names(onnx.load(str(out.graph("w8a8")))))
    assert layers.quantized_coverage >= min_int8_coverage, (layers, Path(record.engines.dir) / "layers-w8a8.json")
    assert layers.warning is None, layers.warning
    feed = sample_inputs(cfg, 64)
    with reference_runner(out) as ref:
        expected = ref.infer(feed)[cfg.outputs[0].name]
    gates = {"fp16": cfg.accuracy.fp16, "w8a8": cfg.accuracy.w8a8}
    for artifact in artifacts(cfg, out):
        if artifact.backend != "tensorrt":
            continue
        with runner_for(artifact, profile=0) as runner:
            got = np.asarray(runner.infer(feed)[cfg.outputs[0].name], dtype=np.float32)
        stats = error_stats(got, expected)
        assert stats.cosine >= gates[artifact.name].min_cosine, (artifact.name, stats)
        assert top1_agreement(got, expected) >= 0.97, artifact.name
    assert json.loads(out.build_record.read_text())["backend"] == "tensorrt"
