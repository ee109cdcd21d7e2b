# trtpipe: `make engines` sets itself up and runs every stage on every models/*.toml
# (or MODEL=name); `make test` runs the CPU test suite. Stages re-run only when
# their inputs (config, graphs, package code) changed.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TRTPIPE := $(BIN)/trtpipe
STAMP  := $(VENV)/.installed
EXTRAS ?= examples,dev

ALL_MODELS := $(basename $(notdir $(wildcard models/*.toml)))
MODELS := $(if $(MODEL),$(MODEL),$(ALL_MODELS))

CORE_SRC   := $(wildcard pipeline/*.py) pyproject.toml
EXPORT_SRC := $(CORE_SRC) $(wildcard pipeline/export/*.py pipeline/zoo/*.py pipeline/zoo/checkpoints/*.pt)

.PHONY: setup engines export test clean help
.DELETE_ON_ERROR:
.SECONDARY:

help:
	@echo "make engines [MODEL=name]   set up, then run every stage for models/*.toml"
	@echo "make test                   CPU test suite"
	@echo "make setup | clean"

setup: $(STAMP)

# A CPU setup pins torch to the CPU build (constraints-cpu.txt); see README for GPU machines.
$(STAMP): pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints-cpu.txt -e '.[$(EXTRAS)]'
	touch $@

engines: export

export: $(foreach m,$(MODELS),engines/$(m)/onnx/model.fp16.onnx)

engines/%/onnx/model.fp32.onnx engines/%/onnx/model.fp16.onnx: models/%.toml $(EXPORT_SRC) | $(STAMP)
	$(TRTPIPE) export -c $<

test: $(STAMP)
	$(BIN)/pytest -q

clean:
	rm -rf engines/*/ calib/*/
