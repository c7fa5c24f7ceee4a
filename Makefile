# The two commands of the README: `make demo` and `make test`. Both work on a fresh clone of a fresh
# Debian machine: they create .venv, install the project, and fetch the sample art first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ART    ?= .cache/art
OUT    ?= out/demo
BENCH_DATA ?= ../shared/bench
SCENES ?= .cache/scenes

.PHONY: help install art scenes proposals verifier facefilter demo test test-fast bench lint clean constraints

help:
	@echo "make demo   - detect faces in the sample art and make an avatar (embedded defaults, no config)"
	@echo "make test   - run the whole test suite (installs what it needs first)"
	@echo "make bench  - run the benchmarks and rewrite bench/RESULTS.md"
	@echo "make constraints - re-resolve every extra of pyproject.toml into constraints.txt (needs PyPI)"
	@echo "make scenes - compose the labelled scene sets for detection/crop benchmarks (.cache/scenes)"
	@echo "make proposals - retrain the two-stage detector's proposal model on scene-tune (committed; CI need not)"
	@echo "make verifier - retrain the two-stage detector's proposal verifier on scene-tune (PyTorch CPU; committed; CI need not)"
	@echo "make facefilter - retrain the detector's false-positive filter on scene-tune (FILTER_DETECTOR/FILTER_OPTIONS)"

# constraints.txt pins every package to the versions the images install too (one lock for all).
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[all,test]'
	touch $@

install: $(VENV)/.installed

art: $(ART)/.complete

$(ART)/.complete: scripts/fetch-art.sh
	bash scripts/fetch-art.sh $(ART)

# Labelled scene sets (tune/test) composed from the fetched art; see bench/scenes.py.
scenes: $(SCENES)/.complete

$(SCENES)/.complete: $(ART)/.complete bench/scenes.py tests/labels/renpy.json | $(VENV)/.installed
	$(PY) bench/scenes.py --art $(ART)/images --out $(SCENES)

# The two-stage detector's proposal classifier, trained on scene-tune only; see bench/train_proposals.py.
# The committed proposal classifier and verifier were trained on scene-tune alone. REAL_TUNE='--realart
# .cache/realart/tune' adds the real-art tune split (bench/realart.py assemble --split tune; optionally
# --hold-out OWNER/NAME ...); docs/detector-speed.md, "Real art", says why the defaults do not.
REAL_TUNE ?= --no-realart
proposals: scenes
	$(PY) bench/train_proposals.py --scenes $(SCENES) $(REAL_TUNE)

# The two-stage detector's proposal verifier (a small CNN), trained on scene-tune only; see bench/train_verifier.py.
# PyTorch (CPU build) lives in its own venv so the project's pins stay as they are; the detector runs the
# exported network with OpenCV. Plain pip may bring PyTorch's CUDA build (it runs on the CPU too, a larger
# download); TORCH_INDEX=https://download.pytorch.org/whl/cpu offers the CPU build as well.
TRAIN_VENV  ?= .cache/train-venv
TORCH_INDEX ?=
$(TRAIN_VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(TRAIN_VENV)
	$(TRAIN_VENV)/bin/python -m pip install -q --upgrade pip
	$(TRAIN_VENV)/bin/python -m pip install -q -c constraints.txt -e '.[detector-base]'
	$(TRAIN_VENV)/bin/python -m pip install -q -c constraints.txt $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) torch onnx
	touch $@

verifier: scenes $(TRAIN_VENV)/.installed
	$(TRAIN_VENV)/bin/python bench/train_verifier.py --scenes $(SCENES) $(REAL_TUNE)

# The default detector's learned false-positive filter, retrained on scene-tune only (bench/train_facefilter.py).
# FILTER_DETECTOR / FILTER_OPTIONS (JSON) name the detector whose candidates it learns from.
FILTER_DETECTOR ?= animeface
FILTER_OPTIONS  ?= {"face_filter": false, "lone_likelihood": 0.0}
facefilter: scenes
	$(PY) bench/train_facefilter.py --scenes $(SCENES) --detector $(FILTER_DETECTOR) --options '$(FILTER_OPTIONS)'

demo: install art
	MIKU_DATA_DIR=$(OUT)/data $(VENV)/bin/mikubot pfp change --dry-run --source local:$(ART)/images --out $(OUT)/avatar.png

test: install art
	bash scripts/test-deps.sh
	MIKU_TEST_ART=$(ART)/images MIKU_TEST_CASCADE=$(BENCH_DATA)/peers/lbpcascade_animeface.xml $(PY) -m pytest -q

bench: install art scenes
	$(PY) bench/detect.py --art $(ART)/images --bench-data $(BENCH_DATA) --scenes $(SCENES)

# One resolution of every extra at once (the GPU detector's onnxruntime-gpu included), in a throwaway
# venv, with pip's own resolver; scripts/constraints.py turns pip's report into constraints.txt.
LOCK_EXTRAS := all,detector-gpu,supervisor,test
LOCK_VENV   := .cache/lock-venv
constraints:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install -q --dry-run --ignore-installed --report $(LOCK_VENV)/report.json '.[$(LOCK_EXTRAS)]'
	$(LOCK_VENV)/bin/python scripts/constraints.py $(LOCK_VENV)/report.json '$(LOCK_EXTRAS)' > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) .cache out .pytest_cache
