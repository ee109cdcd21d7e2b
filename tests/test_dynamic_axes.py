"""Dynamic axes end to end (issue 21): a sequence length that varies between batches.

A tiny encoder takes ``x`` of shape [batch, seq, 16] with ``[[axes]] seq`` in [4, 12]; its calibration
data is four .npz files at lengths 4, 6, 8 and 12, its held-out rows come at lengths 4, 8 and 12:

    x [batch, seq, 16] ─► TransformerEncoderLayer ─► mean over seq ─► Linear ─► logits [batch, 4]
                          (pre-norm: attention over seq, MLP)

Rows of two lengths cannot share a batch: every stage that groups rows keeps each shape apart, and
accuracy and latency are reported per shape.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from pipeline import stages
from pipeline.calibration import methods
from pipeline.config import load_config
from pipeline.data import calibration_batches, rebatch, shape_of
from pipeline.deployment import triton
from pipeline.errors import PipelineError
from pipeline.evaluate.accuracy import Scorer
from pipeline.layout import Layout

ENCODER = textwrap.dedent(
    """
    import numpy as np
    import torch
    from torch import nn

    class Encoder(nn.Module):
        def __init__(self, dim=16, heads=2):
            super().__init__()
            layer = nn.TransformerEncoderLayer(
                dim, heads, dim_feedforward=32, batch_first=True, dropout=0.0, norm_first=True
            )
            self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
            self.head = nn.Linear(dim, 4)

        def forward(self, x):
            return self.head(self.encoder(x).mean(1))

    def build():
        torch.manual_seed(0)
        return Encoder()

    def rows(n, length, offset):
        # Deterministic token features: each row its own phase and scale, each position its own frequency.
        t = np.arange(length, dtype=np.float32)[None, :, None]
        i = np.arange(offset, offset + n, dtype=np.float32)[:, None, None]
        c = np.arange(16, dtype=np.float32)[None, None, :]
        return (np.sin(0.3 * i + 0.2 * t * (c % 5 + 1)) * (1 + 0.5 * np.cos(i))).astype(np.float32)

    def heldout(batch_size):
        for length in (4, 8, 12):
            for start in range(0, 16, batch_size):
                x = rows(min(batch_size, 16 - start), length, 1000 + 100 * length + start)
                yield {"x": x}, (start + np.arange(len(x))) % 4
    """
)

CALIBRATION_LENGTHS = (4, 6, 8, 12)


def _project(tmp_path, extra: str = "", method: str = "auto", rows: int = 8):
    (tmp_path / "enc.py").write_text(ENCODER)
    namespace: dict = {}
    exec(ENCODER, namespace)  # the data the model file makes, for the .npz files
    calib = tmp_path / "data"
    calib.mkdir(exist_ok=True)
    for k, length in enumerate(CALIBRATION_LENGTHS):
        # The longest rows hold the largest values: a range missing them shows.
        scale = 2.0 if length == max(CALIBRATION_LENGTHS) else 1.0
        np.savez(calib / f"part{k}.npz", x=scale * namespace["rows"](rows, length, 10 * k))
    (tmp_path / "enc.toml").write_text(
        textwrap.dedent(
            f"""
            name = "enc"
            [model]
            source = "enc.py:build"
            [[inputs]]
            name = "x"
            shape = ["batch", "seq", 16]
            [[outputs]]
            name = "logits"
            shape = ["batch", 4]
            [batch]
            min = 1
            opt = 4
            max = 8
            [[axes]]
            name = "seq"
            min = 4
            opt = 8
            max = 12
            [calibration]
            source = "data"
            samples = 32
            batch_size = 8
            method = "{method}"
            [evaluation]
            source = "enc.py:heldout"
            """
        )
        + extra
    )
    return load_config(tmp_path / "enc.toml")


FAST_BENCH = "[bench]\ncpu_batches = [1, 8]\nwarmup = 1\niterations = 3\nmin_seconds = 0.01\n"


def test_calibration_streams_each_length_apart(tmp_path):
    cfg = _project(tmp_path)
    lengths = [shape_of(feed, cfg)["seq"] for feed in calibration_batches(cfg)]
    assert lengths == list(CALIBRATION_LENGTHS)  # four files of 8 rows at batch 8: one batch each
    # Batches of 5 end where the length changes: 8 rows of a length are 5 + 3, never 5 + (3 of the next).
    regrouped = [(shape_of(f, cfg)["seq"], len(f["x"])) for f in rebatch(calibration_batches(cfg), cfg, 5)]
    assert regrouped == [(length, n) for length in CALIBRATION_LENGTHS for n in (5, 3)]


def test_a_length_outside_its_range_is_refused(tmp_path):
    cfg = _project(tmp_path)
    np.savez(tmp_path / "data" / "part9.npz", x=np.zeros((2, 20, 16), np.float32))
    with pytest.raises(
        PipelineError, match=r"part9.npz: tensor 'x' has seq 20, outside its \[\[axes\]\] range \[4, 12\]"
    ):
        list(calibration_batches(cfg, samples=40))  # the file after the four the 32 samples take


def test_every_method_calibrates_and_quantizes_mixed_lengths(tmp_path):
    cfg = _project(tmp_path)
    stages.run("export", cfg, root=tmp_path)
    stages.run("calibrate", cfg, root=tmp_path)
    ranges = json.loads(Layout.of(cfg, tmp_path).ranges.read_text())["tensors"]
    every_row = np.concatenate([np.load(p)["x"].ravel() for p in sorted((tmp_path / "data").glob("*.npz"))])
    # The input's range is over the rows of all four lengths, the last and longest included.
    assert ranges["x"]["max"] == pytest.approx(float(every_row.max())) and set(ranges["x"]["amax"]) == {
        *methods.choices()
    }
    for method in methods.choices():
        chosen = dataclasses.replace(cfg, calibration=dataclasses.replace(cfg.calibration, method=method))
        result = stages.run("quantize", chosen, root=tmp_path)
        assert result.passed and {r.shape for r in result.accuracy} == {"seq=4", "seq=8", "seq=12"}, method


def test_mixed_lengths_end_to_end(tmp_path, capsys):
    """export -> calibrate (auto) -> quantize -> compare -> bench -> report -> deploy, on mixed lengths."""
    cfg = _project(tmp_path, FAST_BENCH)
    parity = stages.run("export", cfg, root=tmp_path)
    # Parity at each of seq's min, opt and max, at each parity batch.
    assert sorted({(r.batch, r.shape) for r in parity}) == [
        (b, f"seq={s}") for b in cfg.export.parity_batches for s in (12, 4, 8)
    ]
    stages.run("calibrate", cfg, root=tmp_path)
    quantized = stages.run("quantize", cfg, root=tmp_path)
    assert quantized.passed
    assert {r.shape for r in quantized.accuracy} == {"seq=4", "seq=8", "seq=12"}
    stages.run("build", cfg, root=tmp_path, backend="onnxruntime")
    compared = stages.run("compare", cfg, root=tmp_path)
    shapes = {(r.artifact.split()[0], r.batch, r.shape) for r in compared}
    assert shapes == {
        (a, b, f"seq={s}") for a in ("fp16", "w8a8", "w8a8-cpu") for b in cfg.accuracy.batches for s in (4, 8, 12)
    }
    assert all(0.9 < r.stats.cosine <= 1.0 for r in compared)
    bench = stages.run("bench", cfg, root=tmp_path)
    assert bench.shapes == ("seq=4", "seq=8", "seq=12")
    timed = {(r.precision, r.batch, r.shape) for r in bench.runs[0]}
    assert timed == {(p, b, f"seq={s}") for p in ("fp32", "w8a8-cpu") for b in (1, 8) for s in (4, 8, 12)}
    assert set(bench.speedup) == {1, 8}  # at the last shape, seq=12
    m = bench.medians()
    assert m["fp32"][8] == next(
        r.latency.median_ms for r in bench.runs[0] if (r.precision, r.batch, r.shape) == ("fp32", 8, "seq=12")
    )
    stages.run("report", cfg, root=tmp_path)
    out = Layout.of(cfg, tmp_path)
    report = out.report.read_text()
    for length in (4, 8, 12):  # the latency table and the accuracy table each name every length
        assert report.count(f"| seq={length} ") >= 2 * 2 + 2 * len(cfg.accuracy.batches)
    assert "the largest batch at seq=12" in report and "batch 8 at seq=12:" in report
    model_dir = stages.deploy(cfg, tmp_path / "repo", root=tmp_path, force=True)
    config = triton.parse((model_dir / "config.pbtxt").read_text())
    assert [list(i.dims) for i in config.input] == [[-1, 16]]  # seq dynamic, the batch axis Triton's own
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]  # the [batch] profile's opt and max


def test_each_length_is_gated_on_its_own(tmp_path):
    """Rows at seq 4 match FP32; rows at seq 8 are off by 6% of their spread. Scored together (as
    before shapes were told apart) they pass a 5% gate; scored per shape, seq 8 fails it."""
    cfg = _project(tmp_path, "[accuracy.w8a8]\nmin_cosine = 0.9\nmax_rel_error = 0.05\n")
    gates = {"w8a8": cfg.accuracy.gate("w8a8")}
    rng = np.random.default_rng(0)
    per_shape, together = Scorer(cfg, ["w8a8"]), Scorer(cfg, ["w8a8"])
    for length, noise in ((4, 0.0), (8, 0.06)):
        for _ in range(8):
            ref = rng.standard_normal((8, 4)).astype(np.float32)
            got = ref + noise * rng.standard_normal(ref.shape).astype(np.float32)
            per_shape.update([ref], {"w8a8": [got]}, None, {"x": np.zeros((8, length, 16), np.float32)})
            together.update([ref], {"w8a8": [got]}, None)
    (averaged,) = together.rows(gates)
    assert averaged.failures == () and averaged.shape is None and 0.03 < averaged.stats.rel_error < 0.05
    rows = {r.shape: r for r in per_shape.rows(gates)}
    assert set(rows) == {"seq=4", "seq=8"}
    assert rows["seq=4"].failures == () and rows["seq=4"].stats.rel_error < 1e-6
    assert rows["seq=8"].failures and "relative error" in rows["seq=8"].failures[0]
    assert 0.05 < rows["seq=8"].stats.rel_error < 0.07


def test_accuracy_shapes_name_what_is_scored(tmp_path):
    cfg = _project(tmp_path, "[accuracy]\nshapes = [{ seq = 8 }, { seq = 10 }]\n")
    scorer = Scorer(cfg, ["w8a8"])
    for length in (4, 8):
        ref = np.eye(4, dtype=np.float32)
        scorer.update([ref], {"w8a8": [ref]}, None, {"x": np.zeros((4, length, 16), np.float32)})
    with pytest.raises(
        PipelineError, match=r"accuracy.shapes names seq=10, but no held-out row has that shape .*seq=4, seq=8"
    ):
        scorer.rows({})


@pytest.mark.parametrize(
    ("shapes", "error"),
    [
        ("[{ seq = 16 }]", r"bench.shapes\[0\]' = \{'seq': 16\}: seq 16 is outside its \[\[axes\]\] range \[4, 12\]"),
        ("[{ len = 8 }]", r"bench.shapes\[0\]' = \{'len': 8\}: give a size for each axis of \[\[axes\]\] \(seq\)"),
        ("[]", r"bench.shapes' needs one or more shapes"),
    ],
)
def test_bench_shapes_are_validated(tmp_path, shapes, error):
    with pytest.raises(PipelineError, match=error):
        _project(tmp_path, f"[bench]\nshapes = {shapes}\n")


def test_bench_shapes_default_to_each_axis_min_opt_max(tmp_path):
    assert _project(tmp_path).bench.shapes == ({"seq": 4}, {"seq": 8}, {"seq": 12})
    assert _project(tmp_path, "[bench]\nshapes = [{ seq = 6 }]\n").bench.shapes == ({"seq": 6},)


def _matmul_relu() -> onnx.ModelProto:
    """
    x [batch, seq, 16] ─► MatMul W [16, 32] ─► h [batch, seq, 32] ─► Relu ─► y [batch, seq, 32]
    """
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"), helper.make_node("Relu", ["h"], ["y"], name="relu")],
        "dynamic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 32])],
        [onnx.numpy_helper.from_array(np.ones((16, 32), np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    return onnx.shape_inference.infer_shapes(model)


def test_memory_plan_counts_each_axis_at_its_max():
    from pipeline.calibration.memory import capture_plan, liveness_peak, sample_bytes
    from pipeline.graphview import GraphView

    view = GraphView(_matmul_relu())
    axes = {"seq": 12}
    assert sample_bytes(view, "x", axes) == 12 * 16 * 4 and sample_bytes(view, "h", axes) == 12 * 32 * 4
    assert sample_bytes(view, "h") == 32 * 4  # without the axis' size: one position, as before
    # Before Relu, x is dead (MatMul read it last) and h alone is alive; then h and y.
    assert liveness_peak(view, axes) == 2 * 12 * 32 * 4
    plan = capture_plan(view, ["x", "h"], 64, min_run_bytes=0, axes=axes)
    assert plan.inference_bytes == 2 * 12 * 32 * 4 and plan.budget == 64 * plan.inference_bytes // 2
    assert plan.micro_batch * (12 * 16 * 4 + 12 * 32 * 4) <= plan.budget


def test_engines_take_every_length_on_the_tensorrt_standin(tmp_path):
    """TensorRT's path on the stand-in: a profile with seq at 4/8/12 for each input, and compare and
    bench set each batch's own length on the engine."""
    from tests.trt_standin import standin

    cfg = _project(tmp_path, FAST_BENCH.replace("[bench]\n", "[bench]\ngpu_batches = [1, 8]\n"))
    stages.run("export", cfg, root=tmp_path)
    stages.run("quantize", cfg, root=tmp_path)
    with standin(tmp_path / "gpu-machine"):
        built = stages.run("build", cfg, root=tmp_path)
        assert built.backend == "tensorrt"
        manifest = json.loads((tmp_path / built.engines.dir / "manifest.json").read_text())
        assert manifest["profiles"] == [{"x": {"min": [1, 4, 16], "opt": [4, 8, 16], "max": [8, 12, 16]}}]
        compared = stages.run("compare", cfg, root=tmp_path)
        bench = stages.run("bench", cfg, root=tmp_path)
    engines = [r for r in compared if r.artifact.endswith("(TensorRT)")]
    assert {r.shape for r in engines} == {"seq=4", "seq=8", "seq=12"} and all(not r.failures for r in engines)
    assert {(r.precision, r.shape) for r in bench.runs[0]} == {
        (p, f"seq={s}") for p in ("fp16", "w8a8") for s in (4, 8, 12)
    }


def test_smoothquant_measures_mixed_lengths(tmp_path):
    """SmoothQuant keeps the first rows of each LayerNorm output, of whatever lengths they come in (here
    4 rows at seq 4, then 4 at seq 6), and judges each alpha on them as channel vectors."""
    # 16 calibration rows only: the CPU graph's gate at seq 4 is loosened from 0.99 to what they give.
    gate = "[accuracy.w8a8-cpu]\nmin_cosine = 0.95\n"
    cfg = _project(tmp_path, '[quantize]\nsmoothquant = "auto"\n' + gate, rows=4)
    stages.run("export", cfg, root=tmp_path)
    result = stages.run("quantize", cfg, root=tmp_path)
    assert result.passed and result.smoothquant is not None and result.smoothquant.layers
    channels = json.loads(Layout.of(cfg, tmp_path).channels.read_text())["tensors"]
    assert channels and all(len(t["absmax"]) == 16 for t in channels.values())


def test_rows_are_cut_or_repeated_to_a_shape(tmp_path):
    """Parity and bench need a length the data may not have: positions are cut, or repeated in order."""
    from pipeline.data import fit_shape

    cfg = _project(tmp_path)
    x = np.arange(2 * 4 * 16, dtype=np.float32).reshape(2, 4, 16)
    longer = fit_shape({"x": x}, cfg, {"seq": 10})["x"]
    assert longer.shape == (2, 10, 16) and np.array_equal(longer[:, [0, 4, 8]], np.stack([x[:, 0]] * 3, axis=1))
    assert np.array_equal(longer[:, 9], x[:, 1])
    assert np.array_equal(fit_shape({"x": x}, cfg, {"seq": 3})["x"], x[:, :3])
