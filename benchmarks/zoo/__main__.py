"""``python -m benchmarks.zoo [NAME ...]``: the zoo through every stage, then one Markdown table.

Runs from the repository root; needs the zoo environment (``make zoo-setup``). Writes
``engines/zoo.json`` (one record per model; a run of some models replaces only theirs),
``engines/zoo.md`` from it, and a log per stage in ``engines/zoo-logs/``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.zoo.driver import STAGES, StageRun, run_model
from benchmarks.zoo.inits import INIT_ROWS, init_config
from benchmarks.zoo.table import markdown, merge, model_row
from pipeline.config import load_config
from pipeline.fileio import read_json, write_json, write_text

CONFIGS = Path(__file__).parent / "configs"
# Cheapest first, so a short run still covers several families.
ORDER = (
    "torch_encoder_padded",
    "llama_small",
    "mobilenet_v3_large",
    "regnet_y_400mf",
    "efficientnet_b0",
    "mobilevit_xs",
    "levit_128s",
    "deeplabv3_mobilenet_v3_large",
    "clip_vision",
    "poolformerv2_s12",
    "distilbert",
    "distilbert_dynamic",
    "mobilebert",
    "t5_small_encoder",
    "bert_base",
    "resnet50",
    "convnext_tiny",
    "swin_t",
    "gpt2",
    "vit_b_16",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    every = " ".join([*ORDER, *INIT_ROWS])
    parser.add_argument("names", nargs="*", help=f"models to run (default: all, in this order: {every})")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per stage before it is killed")
    args = parser.parse_args()
    root = Path.cwd()
    names = args.names or [*ORDER, *sorted({p.stem for p in CONFIGS.glob("*.toml")} - set(ORDER)), *INIT_ROWS]
    unknown = [n for n in names if not (CONFIGS / f"{n}.toml").is_file() and n not in INIT_ROWS]
    if unknown:
        parser.error(f"no config for {', '.join(unknown)} in {CONFIGS}, nor a trtpipe init row")
    logs = root / "engines" / "zoo-logs"
    for name in names:
        print(f"{name}:", flush=True)
        if name in INIT_ROWS:  # the row's config is what trtpipe init writes (named after the ONNX file)
            config, init = init_config(name, root, logs, args.timeout)
            if init.status != "ok":
                runs = [init, *(StageRun(s, "skip", "init did not succeed") for s in STAGES)]
                records = _save(model_row(name, runs, root).as_dict(), root)
                continue
            runs = [init, *run_model(config, root, logs, args.timeout)]
        else:
            config = CONFIGS / f"{name}.toml"
            runs = run_model(config, root, logs, args.timeout)
        model = load_config(config).name
        records = _save(model_row(model, runs, root).as_dict(), root)  # after every model: a stop keeps it
    print(markdown(records))


def _save(record: dict, root: Path) -> list[dict]:
    """Into engines/zoo.json beside the rows of models not run this time; zoo.md rewritten from it."""
    saved = read_json(root / "engines" / "zoo.json") or {"models": []}
    records = merge(saved["models"], record, ORDER)
    write_json(root / "engines" / "zoo.json", {"models": records})
    write_text(root / "engines" / "zoo.md", markdown(records))
    return records


if __name__ == "__main__":
    main()
