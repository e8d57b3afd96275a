# Two commands that work on a fresh machine:
#   make demo   set up .venv and run the main job on the bundled fixture
#   make test   set up .venv and run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EF     := $(VENV)/bin/explainfix
FIXTURE_ARGS := fixtures/digits_resnet.pt --arch fixtures/digits_resnet.py:DigitsResNet --input-size 32
DEMO_OUT := out/demo

.PHONY: setup demo test test-fast lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(EF) info $(FIXTURE_ARGS)
	$(EF) prune $(FIXTURE_ARGS) --target-macs 2x --data fixtures/digits/calib -o $(DEMO_OUT)/half --force
	$(EF) prune $(FIXTURE_ARGS) --pct 70 --data fixtures/digits/calib -o $(DEMO_OUT)/pruned --force
	$(EF) explain $(DEMO_OUT)/pruned --trust-code --data fixtures/digits/calib -o $(DEMO_OUT)/spectra --force
	$(EF) export $(DEMO_OUT)/pruned --trust-code --onnx --data fixtures/digits/calib --force
	$(EF) bench $(FIXTURE_ARGS) $(DEMO_OUT)/pruned --iters 100
	$(EF) compress $(FIXTURE_ARGS) --pct 70 --data fixtures/digits/calib --eval-data fixtures/digits/eval \
	    --finetune-epochs 2 --max-accuracy-drop 8 --min-agreement 0.9 -o $(DEMO_OUT)/compressed --force
	$(EF) sweep $(FIXTURE_ARGS) --data fixtures/digits/calib --eval-data fixtures/digits/eval --targets 2x,3x,4x \
	    --bench-iters 20 -o $(DEMO_OUT)/sweep --force
	@echo "demo outputs in $(DEMO_OUT)/ (pruned/, spectra/spectra.png, compressed/summary.md, sweep/tradeoff.png)"

lint: setup
	$(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest -q -ra

test-fast: setup
	$(PY) -m pytest -q -ra -m "not slow"

clean:
	rm -rf out .pytest_cache
