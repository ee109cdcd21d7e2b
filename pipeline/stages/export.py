"""``trtpipe export``: the FP32 and FP16 ONNX graphs from the model's source, written only once they
pass parity with it."""

from __future__ import annotations

from pipeline.console import info
from pipeline.stages.base import Stage, StageRun
from pipeline.targets.base import FP16, FP32


def run(r: StageRun) -> list:
    from pipeline import onnxutil
    from pipeline.batchnorm import fold_batchnorm, fold_scalar_affines
    from pipeline.data import sample_inputs
    from pipeline.fp16 import Fp16OnnxFromOnnx
    from pipeline.sources import source_for
    from pipeline.sources.parity import check_parity, format_parity

    cfg, out = r.cfg, r.out
    source = source_for(cfg)
    source.load()
    example = sample_inputs(cfg, 2)  # batch 2: torch.export specializes axes of size 0 and 1
    fp32, folded = fold_batchnorm(source.fp32_graph(example, out.log("export")))
    if folded:
        info(
            f"{cfg.name}: {len(folded)} BatchNormalization(s) folded into the layer before, in FP32: "
            f"{', '.join(folded)}"
        )
    fp32, affines = fold_scalar_affines(fp32)
    if affines:
        info(f"{cfg.name}: {len(affines) // 2} scalar Mul -> Add pair(s) after a Conv folded into it, in FP32")
    # The parity rows (the largest batch holds the others): an activation beyond FP16's range keeps its nodes FP32.
    fp16 = Fp16OnnxFromOnnx(cfg)(fp32, sample_inputs(cfg, max(cfg.export.parity_batches)))
    graphs = {FP32: fp32, FP16: fp16}
    with r.writing() as written:
        with onnxutil.staged({out.graph(p): g for p, g in graphs.items()}) as staged:
            rows = check_parity(cfg, source.reference, dict(zip(graphs, staged.values(), strict=True)), source.kind)
        written.paths = [out.graph(p) for p in graphs]
    info(f"{cfg.name}: wrote {out.graph(FP32)} and {out.graph(FP16)} ({onnxutil.exporter(fp32)} exporter)")
    info(format_parity(rows))
    return rows


STAGE = Stage("export", ("name", "model", "inputs", "outputs", "batch", "axes", "export"), run, source=True)
