# trtpipe: `make engines` sets itself up and runs every stage on every models/*.toml
# (or MODEL=name); `make test` runs the CPU test suite. Stages re-run only when
# their inputs (config, graphs, package code) changed.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TRTPIPE := $(BIN)/trtpipe
STAMP  := $(VENV)/.installed
EXTRAS ?= examples,dev,deploy

ALL_MODELS := $(basename $(notdir $(wildcard models/*.toml)))
MODELS := $(if $(MODEL),$(MODEL),$(ALL_MODELS))

CORE_SRC   := $(wildcard pipeline/*.py pipeline/evaluate/*.py) pyproject.toml
EXPORT_SRC := $(CORE_SRC) $(wildcard pipeline/export/*.py pipeline/zoo/*.py pipeline/zoo/checkpoints/*.pt)
QUANT_SRC  := $(CORE_SRC) $(wildcard pipeline/calibrate/*.py pipeline/quantize/*.py)

.PHONY: deploy setup engines export calibrate quantize build compare bench report report-files bench-quant bench-memory gpu-check test clean help
.DELETE_ON_ERROR:
.SECONDARY:

help:
	@echo "make engines [MODEL=name]   set up, then run every stage for models/*.toml"
	@echo "make test                   CPU test suite"
	@echo "make deploy MODEL=name TO=dir  Triton model repository (or FORMAT=plain) with manifest"
	@echo "make report                 rewrite reports from saved results"
	@echo "make gpu-check              on a GPU machine: build engines, check INT8 coverage and parity"
	@echo "make bench-quant            our calibration/quantization vs ONNX Runtime's quantize_static"
	@echo "make bench-memory           peak RSS of calibrate vs plain FP32 inference at the same batch"
	@echo "make setup | clean"

setup: $(STAMP)

# A CPU setup pins torch to the CPU build (constraints-cpu.txt); see README for GPU machines.
$(STAMP): pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints-cpu.txt -e '.[$(EXTRAS)]'
	touch $@

engines: report-files

export: $(foreach m,$(MODELS),engines/$(m)/onnx/model.fp16.onnx)
calibrate: $(foreach m,$(MODELS),calib/$(m)/ranges.json)
quantize: $(foreach m,$(MODELS),engines/$(m)/onnx/model.w8a8.onnx)
build: $(foreach m,$(MODELS),engines/$(m)/build.json)
compare: $(foreach m,$(MODELS),engines/$(m)/results/compare.json)
bench: $(foreach m,$(MODELS),engines/$(m)/results/bench.json)
report-files: $(foreach m,$(MODELS),engines/$(m)/reports/report.md)

# Rewrite the reports from saved results, running no model.
report:
	@for m in $(MODELS); do $(TRTPIPE) report -c models/$$m.toml || exit 1; done

engines/%/onnx/model.fp32.onnx engines/%/onnx/model.fp16.onnx: models/%.toml $(EXPORT_SRC) | $(STAMP)
	$(TRTPIPE) export -c $<

calib/%/ranges.json: engines/%/onnx/model.fp32.onnx models/%.toml $(QUANT_SRC) | $(STAMP)
	$(TRTPIPE) calibrate -c models/$*.toml && touch $@

engines/%/onnx/model.w8a8.onnx engines/%/onnx/model.w8a8-cpu.onnx: calib/%/ranges.json engines/%/onnx/model.fp16.onnx models/%.toml
	$(TRTPIPE) quantize -c models/$*.toml

# TensorRT engines when TensorRT and a GPU are present; otherwise one line says why and the
# record points later stages at the ONNX graphs on ONNX Runtime.
engines/%/build.json: engines/%/onnx/model.w8a8.onnx engines/%/onnx/model.fp16.onnx models/%.toml $(wildcard pipeline/build/*.py)
	$(TRTPIPE) build -c models/$*.toml

EVAL_SRC := $(CORE_SRC) pipeline/runners.py

engines/%/results/compare.json: engines/%/build.json models/%.toml $(EVAL_SRC)
	$(TRTPIPE) compare -c models/$*.toml

engines/%/results/bench.json: engines/%/build.json models/%.toml $(EVAL_SRC)
	$(TRTPIPE) bench -c models/$*.toml

engines/%/reports/report.md: engines/%/results/compare.json engines/%/results/bench.json models/%.toml $(CORE_SRC)
	$(TRTPIPE) report -c models/$*.toml

# make deploy MODEL=name TO=dir [PRECISION=w8a8|fp16] [FORMAT=triton|plain]
deploy: $(if $(MODEL),engines/$(MODEL)/reports/report.md)
	@test -n "$(MODEL)" -a -n "$(TO)" || { echo "usage: make deploy MODEL=name TO=dir [PRECISION=w8a8] [FORMAT=triton]"; exit 2; }
	$(TRTPIPE) deploy -c models/$(MODEL).toml --to $(TO) --precision $(or $(PRECISION),w8a8) --format $(or $(FORMAT),triton)

bench-quant: export
	$(BIN)/python -m benchmarks.quant_peers $(foreach m,$(MODELS),models/$(m).toml)

bench-memory: export
	$(BIN)/python -m benchmarks.calib_memory $(foreach m,$(MODELS),models/$(m).toml)

# For GPU machines (see README, GPU setup): builds both example models' engines, checks
# INT8 coverage and parity against FP32. Fails here with the probe's reason.
gpu-check: $(STAMP)
	$(BIN)/python -c "from pipeline.build.probe import probe; c = probe(); raise SystemExit(0 if c.available else 'gpu-check: ' + c.reason)"
	$(BIN)/pytest -q -m gpu tests/gpu

test: $(STAMP)
	$(BIN)/ruff check --quiet . && $(BIN)/ruff format --check --quiet .
	$(BIN)/pytest -q

clean:
	rm -rf engines/*/ calib/*/
