"""The stages' results as types (pipeline.results): each one round-trips through its file, keeps the
field names readers of the file use, and a file this trtpipe cannot read is one line naming it and
the stage that writes it again; report, deploy and compare read them, and engines re-runs the
stage whose file is of an older format."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline import results, stages
from pipeline.cli import main
from pipeline.errors import PipelineError
from pipeline.evaluate.accuracy import AccuracyRow
from pipeline.evaluate.metrics import ErrorStats, Score
from pipeline.layout import Layout
from pipeline.placement import Skipped
from pipeline.results import (
    BenchResult,
    BenchRow,
    BudgetResult,
    BuildResult,
    CompareResult,
    Engines,
    KeptLayer,
    Latency,
    LayerError,
    LayerSummary,
    QuantizeResult,
    Smoothed,
    Smoothing,
)
from tests.conftest import rerecord

STATS = ErrorStats(0.25, 0.01, 0.5, 0.02, 0.9999, 0.998, 0.03, 0.01)


def _row(artifact: str, batch: int | None = None, failures: tuple[str, ...] = ()) -> AccuracyRow:
    return AccuracyRow(artifact, "logits", STATS, 0.97, 91.5, 92.0, failures, batch)


def _bench(share: dict[str, float] | None = None) -> BenchResult:
    rows = tuple(
        BenchRow(f"{p} (ONNX Runtime)", p, b, Latency(ms, ms * 1.1, ms * 1.2, ms * 0.9, 0.01, 40))
        for b in (1, 8)
        for p, ms in (("fp32", 2.0 * b), ("w8a8-cpu", 1.5 * b))
    )
    return BenchResult(
        "onnxruntime-cpu",
        "ONNX Runtime CPU",
        "ONNX Runtime CPU EP, 2 intra-op thread(s), host arrays in and out",
        "fp32",
        "w8a8-cpu",
        (1, 8),
        2,
        3,
        20,
        0.05,
        (rows, rows),
        {1: 1.33, 8: 1.33},
        ("fp32 (ONNX Runtime) batch 1: within",),
        share,
        None if share is None else 8,
    )


SUMMARY = LayerSummary(40, 20, 18, 3, 1, True, 18, 17, True)
SAMPLES = {
    "quantize": QuantizeResult(
        "auto",
        False,
        (_row("w8a8"), _row("w8a8-cpu", failures=("cosine 0.9 < 0.99",))),
        (Skipped("fc", "Gemm", "N=4 < 16: too small to gain from INT8"),),
        7,
        Smoothing(
            "auto",
            (
                Smoothed("ln", "ln_out", ("q", "k"), 0.5, 0.1, 9.0, 40.0, 3.0),
                Smoothed("ln2", "ln2_out", ("fc1",), None, 1.0, 1.0, 2.0, 2.0),
            ),
            (("ln3", "read by a Softmax"),),
            2e-7,
        ),
        {"w8a8": (LayerError("conv1", "Conv", 0.01, 0.05, 0.04, "outlier channels"),)},
        {
            "w8a8": BudgetResult(
                "w8a8",
                12,
                10,
                4,
                Score(0.99, 0.95, 0.2, None),
                Score(0.999, 0.99, 0.05, None),
                None,
                (KeptLayer("conv1", "Conv", 0.02, 0.0, 0.96),),
                5,
                1.5,
            )
        },
    ),
    "quantize, smoothquant off": QuantizeResult("max", True, (_row("w8a8"),), (), 3, None, {}, {}),
    "build, engines": BuildResult(
        "tensorrt",
        ("CUDAExecutionProvider", "CPUExecutionProvider"),
        Engines(
            "engines/tiny/trt/gpu-sm89-trt11",
            "engines/tiny/trt/gpu-sm89-trt11/manifest.json",
            {"fp16": LayerSummary(30, 20, 0, 2, 0, True), "w8a8": SUMMARY},
        ),
    ),
    "build, skipped": BuildResult("onnxruntime", ("CPUExecutionProvider",), reason="TensorRT is not installed"),
    "compare": CompareResult((_row("w8a8 (ONNX Runtime)", 1), _row("w8a8 (ONNX Runtime)", 32, ("top-1",))), False),
    "bench, on a CPU": _bench({"MatMul": 0.4, "Softmax": 0.6}),
    "bench": _bench(),
}


@pytest.mark.parametrize("name", list(SAMPLES))
def test_each_result_round_trips(name, tmp_path):
    out = Layout("tiny", tmp_path)
    result = SAMPLES[name]
    results.save(result, out)
    assert json.loads(type(result).path(out).read_text())["version"] == type(result).VERSION
    assert results.load(type(result), out) == result
    assert results.problem(type(result), out) is None


def test_the_files_keep_the_names_their_readers_use(tmp_path):
    """Benchmarks, tests and users read these keys from the JSON files: typing them renamed none."""
    out = Layout("tiny", tmp_path)
    for name in ("quantize", "build, engines", "build, skipped", "compare", "bench, on a CPU"):
        results.save(SAMPLES[name], out)
    quantize = json.loads(out.result("quantize").read_text())
    row = quantize["accuracy"][0]
    assert {"artifact", "output", "cosine", "centered_cosine", "rel_error", "max_abs", "top1_agreement"} <= set(row)
    assert {"metric", "fp32_metric", "failures"} <= set(row) and "batch" not in row
    assert quantize["skipped"] == [{"node": "fc", "op_type": "Gemm", "reason": "N=4 < 16: too small to gain from INT8"}]
    assert quantize["worst_layers"]["w8a8"][0]["added"] == 0.04
    fit = quantize["budget"]["w8a8"]
    assert (fit["weighted_layers"], fit["int8_before"], fit["int8_after"], fit["fp32_metric"]) == (12, 10, 9, None)
    assert fit["after"]["centered_cosine"] == 0.99 and fit["kept_fp16"][0]["reason"].startswith("in FP16 alone")
    assert quantize["smoothquant"]["layers"][0]["readers"] == ["q", "k"]
    assert quantize["smoothquant"]["skipped"] == [["ln3", "read by a Softmax"]]
    build = json.loads(out.build_record.read_text())
    assert build["backend"] == "onnxruntime" and build["reason"] == "TensorRT is not installed"
    assert "dir" not in build and "layers" not in build
    results.save(SAMPLES["build, engines"], out)
    build = json.loads(out.build_record.read_text())
    assert build["dir"].endswith("trt11") and build["manifest"].endswith("manifest.json") and "reason" not in build
    w8a8 = build["layers"]["w8a8"]
    assert w8a8["quantized_coverage"] == pytest.approx(17 / 18) and "warning" not in w8a8
    assert json.loads(out.result("compare").read_text())["rows"][1]["batch"] == 32
    bench = json.loads(out.result("bench").read_text())
    assert bench["speedup"] == {"1": 1.33, "8": 1.33} and bench["profiled_batch"] == 8
    assert bench["runs"][0][0]["throughput_items_per_s"] == pytest.approx(1 / 2e-3)
    assert {"median_ms", "p90_ms", "iqr_ms", "precision"} <= set(bench["runs"][0][0])


def test_a_nan_score_round_trips_as_nan(tmp_path):
    """A graph whose output overflows scores NaN; the file keeps it (Python's JSON writes NaN)."""
    out = Layout("tiny", tmp_path)
    nan = AccuracyRow("w8a8", "logits", ErrorStats(*[math.nan] * 8), None, None, None, ("cosine nan",))
    results.save(QuantizeResult("max", False, (nan,), (), 0, None, {}, {}), out)
    (row,) = results.load(QuantizeResult, out).accuracy
    assert math.isnan(row.stats.cosine) and row.failures == ("cosine nan",)


def _edited(path: Path, edit) -> None:
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw))


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda raw: raw.pop("version"), r"written by an older trtpipe \(no version\)"),
        (lambda raw: raw.update(version=0), r"written by an older trtpipe \(version 0; this one reads 1\)"),
        (lambda raw: raw.update(version=7), r"written by a newer trtpipe \(version 7; this one reads 1\)"),
        (lambda raw: raw.pop("runtime"), r"not a bench result this trtpipe reads \(no key 'runtime'\)"),
        (
            lambda raw: raw["runs"][0][1].update(median_ms="fast"),
            r"not a bench result this trtpipe reads \(runs\[0\]\[1\]\.median_ms: a str, expected float\)",
        ),
        (lambda raw: raw.update(batches=8), r"\(batches: 8, expected tuple\[int, \.\.\.\]\)"),
        (lambda raw: raw["speedup"].update(big=2.0), r"\(speedup: key 'big', expected an integer\)"),
    ],
)
def test_a_bench_result_this_trtpipe_cannot_read_is_one_line(tmp_path, edit, words):
    out = Layout("tiny", tmp_path)
    results.save(SAMPLES["bench"], out)
    _edited(out.result("bench"), edit)
    with pytest.raises(
        PipelineError, match=rf"^engines/tiny/results/bench\.json: .*{words}.*; re-run trtpipe bench -c x\.toml$"
    ) as caught:
        results.load(BenchResult, out, Path("x.toml"))
    assert "\n" not in str(caught.value)
    assert results.problem(BenchResult, out) in str(caught.value)


def test_a_build_record_of_both_shapes_or_none_is_refused(tmp_path):
    out = Layout("tiny", tmp_path)
    results.save(SAMPLES["build, engines"], out)
    _edited(out.build_record, lambda raw: raw.update(reason="TensorRT is not installed"))
    both = r"build\.json: not a build result .*backend 'tensorrt' with engines and with a reason;"
    with pytest.raises(PipelineError, match=both):
        results.load(BuildResult, out)
    _edited(out.build_record, lambda raw: raw.update(backend="openvino"))
    with pytest.raises(PipelineError, match=r"build\.json: .*backend 'openvino', expected 'tensorrt' or 'onnxruntime'"):
        results.load(BuildResult, out)


@pytest.mark.parametrize("content", ['{"backend": "onnxrun', "[]", "null"])
def test_a_truncated_or_foreign_file_is_one_line(tmp_path, content):
    out = Layout("tiny", tmp_path)
    out.result("compare").parent.mkdir(parents=True)
    out.result("compare").write_text(content)
    with pytest.raises(
        PipelineError, match=r"compare\.json: not (readable JSON|a compare result) .*; re-run trtpipe compare$"
    ):
        results.load(CompareResult, out)


def test_a_missing_result_names_the_stage_or_is_none(tmp_path):
    out = Layout("tiny", tmp_path)
    with pytest.raises(
        PipelineError, match=r"^engines/tiny/results/quantize\.json: no saved quantize; run trtpipe quantize first"
    ):
        results.load(QuantizeResult, out)
    assert results.load_if_saved(QuantizeResult, out) is None and results.problem(QuantizeResult, out) is None


# --- the stages on results of the format before versions -------------------------------------------------


def _written_before_versions(cfg, out, stage: str) -> Path:
    """``stage``'s result as a trtpipe before typed results wrote it (no version), and recorded as
    that stage's own output, as that trtpipe recorded it."""
    kind = stages.STAGES[stage].result
    path = kind.path(out)
    _edited(path, lambda raw: raw.pop("version"))
    rerecord(cfg, out, stage)
    return path


@pytest.mark.parametrize(
    ("written", "reader", "args"),
    [("bench", "report", []), ("build", "compare", []), ("compare", "deploy", ["--to", "deployed"])],
)
def test_a_result_of_the_format_before_versions_is_one_line_then_engines_remakes_it(
    pipeline_run, written, reader, args, capsys
):
    cfg, path, out = pipeline_run
    for stage in ("compare", "bench"):
        stages.run(stage, cfg)
    old = _written_before_versions(cfg, out, written)
    result = CliRunner().invoke(main, [reader, "-c", str(path), *args])
    assert result.exit_code == 1 and "Traceback" not in result.output, (result.output, result.exception)
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert line == (
        f"Error: {out.key(old)}: written by an older trtpipe (no version); re-run trtpipe {written} -c {path}"
    )
    capsys.readouterr()
    ran = stages.engines(cfg)
    assert ran[0] == written and "report" in ran
    assert f"tiny: {written}: {out.key(old)}: written by an older trtpipe (no version)" in capsys.readouterr().err
    assert json.loads(old.read_text())["version"] == 1
