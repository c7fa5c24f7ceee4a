# The two commands of the README: `make demo` and `make test`. Both work on a fresh clone of a fresh
# Debian machine: they create .venv, install the project, and fetch the sample art first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ART    ?= .cache/art
OUT    ?= out/demo
BENCH_DATA ?= ../shared/bench
SCENES ?= .cache/scenes

.PHONY: help install art scenes realart proposals verifier facefilter demo test test-hysts test-fast stack-test bench lint clean constraints llama-swap

help:
	@echo "make demo   - detect faces in the sample art and make an avatar (embedded defaults, no config)"
	@echo "make test   - run the whole test suite (installs what it needs first; builds the real llama-swap where Go is installed)"
	@echo "make stack-test - build the images and run the compose stack, GPU-less and GPU setup (card simulated) (root; Docker from Debian)"
	@echo "make llama-swap - build the real llama-swap (third_party/llama-swap) into .cache/go/bin for the tests"
	@echo "make test-hysts - the hysts backend's tests in .cache/hysts-venv (PyTorch and anime-face-detector, a large download)"
	@echo "make bench  - run the benchmarks and rewrite bench/RESULTS.md"
	@echo "make constraints - re-resolve every extra of pyproject.toml into constraints.txt (needs PyPI)"
	@echo "make scenes - compose the labelled scene sets for detection/crop benchmarks (.cache/scenes)"
	@echo "make realart REALART_REPOS=DIR - assemble the hand-labelled real-art sets from their source repositories (.cache/realart)"
	@echo "make proposals - retrain the two-stage detector's proposal model on scene-tune (committed; CI need not)"
	@echo "make verifier - retrain the two-stage detector's proposal verifier on scene-tune + real-art tune (PyTorch CPU; committed; CI need not)"
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

# The real-art sets (bench/realart.py, docs/realart.md): pictures by many artists, taken from public repositories
# at the commits bench/realart/{tune,test}.json record. REALART_REPOS names a folder holding one repository per
# source, checked out or bare, as DIR/owner+name, DIR/owner/name or DIR/owner+name/repo; REALART_CLONE=1 clones
# the missing ones from GitHub (needs a network). There is no default: the folder is machine-specific.
REALART_REPOS ?=
REALART_CLONE ?=
REALART ?= .cache/realart
realart: | $(VENV)/.installed
	@test -n "$(REALART_REPOS)" || { echo "make realart: set REALART_REPOS=DIR, a folder of the source repositories (DIR/owner+name, DIR/owner/name or DIR/owner+name/repo; add REALART_CLONE=1 to clone the missing ones); see docs/realart.md" >&2; exit 2; }
	$(PY) bench/realart.py assemble --repos $(REALART_REPOS) --out $(REALART) $(if $(REALART_CLONE),--clone)

# The two-stage detector's proposal classifier, trained on scene-tune only; see bench/train_proposals.py.
# The committed proposal classifier was trained on scene-tune alone. REAL_TUNE='--realart
# .cache/realart/tune' adds the real-art tune split (bench/realart.py assemble --split tune; optionally
# --hold-out OWNER/NAME ...); docs/detector-speed.md, "Real art", says why the default does not.
REAL_TUNE ?= --no-realart
proposals: scenes
	$(PY) bench/train_proposals.py --scenes $(SCENES) $(REAL_TUNE)

# The two-stage detector's proposal verifier (a small CNN), trained on scene-tune and the real-art tune split
# (`make realart` first: it needs the assembled pictures); see bench/train_verifier.py. VERIFIER_TUNE=--no-realart
# trains on the scenes alone; '--realart .cache/realart/tune --hold-out OWNER/NAME ...' leaves sources out.
# PyTorch (CPU build) lives in its own venv so the project's pins stay as they are; the detector runs the
# exported network with OpenCV. Plain pip may bring PyTorch's CUDA build (it runs on the CPU too, a larger
# download); TORCH_INDEX=https://download.pytorch.org/whl/cpu offers the CPU build as well.
TRAIN_VENV  ?= .cache/train-venv
VERIFIER_TUNE ?= --realart $(REALART)/tune
TORCH_INDEX ?=
$(TRAIN_VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(TRAIN_VENV)
	$(TRAIN_VENV)/bin/python -m pip install -q --upgrade pip
	$(TRAIN_VENV)/bin/python -m pip install -q -c constraints.txt -e '.[detector-base]'
	$(TRAIN_VENV)/bin/python -m pip install -q -c constraints.txt $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) torch onnx
	touch $@

verifier: scenes $(TRAIN_VENV)/.installed
	$(TRAIN_VENV)/bin/python bench/train_verifier.py --scenes $(SCENES) $(VERIFIER_TUNE)

# The default detector's learned false-positive filter (bench/train_facefilter.py): on scene-tune, plus real-art
# tune with REAL_TUNE='--realart .cache/realart/tune' (add --loso to REAL_TUNE for the leave-one-source-out report).
# FILTER_DETECTOR / FILTER_OPTIONS (JSON) name the detector whose candidates it learns from.
FILTER_DETECTOR ?= animeface
FILTER_OPTIONS  ?= {"face_filter": false, "lone_likelihood": 0.0}
facefilter: scenes
	$(PY) bench/train_facefilter.py --scenes $(SCENES) --detector $(FILTER_DETECTOR) --options '$(FILTER_OPTIONS)' $(REAL_TUNE)

# The sample art shows Ren'Py's Eileen, Lucy and Sylvie, not Hatsune Miku: the demo is Eileen's bot (her name and
# the hair colour read from her sprites, as tests/mikubot/test_hair.py and bench/scenes.py label her) on her three sprites,
# so the heuristic verifier judges each picture by the character it shows. Each run starts from a fresh history
# (posts are never reused, and three sprites make one change).
DEMO_ART  = $(OUT)/eileen
DEMO_HAIR = \#f87f7d
demo: install art
	rm -rf $(OUT)/data $(DEMO_ART) && mkdir -p $(DEMO_ART) && cp "$(ART)/images/"eileen*.png $(DEMO_ART)/
	MIKU_DATA_DIR=$(OUT)/data MIKU_CHARACTER_NAME=Eileen MIKU_HAIR_COLOURS='$(DEMO_HAIR)' \
	  $(VENV)/bin/mikubot pfp change --dry-run --source local:$(DEMO_ART) --out $(OUT)/avatar.png

# The real llama-swap for tests/vramctl/test_llama_swap_real.py, built where Go is installed from its source in
# third_party/llama-swap (this commit: tag v250, the release llama-swap/Dockerfile pins; the Go module proxy has
# its dependencies but not llama-swap itself), without the web UI. GOPATH and the build cache stay in .cache/go.
LLAMA_SWAP_COMMIT := 60226b63776efac11e15828abe0bb302ec259699
LLAMA_SWAP_VERSION := v250
GOBIN_DIR := $(abspath .cache/go/bin)
GO ?= $(or $(shell command -v go 2>/dev/null),$(wildcard /usr/local/go/bin/go),go)
LLAMA_SWAP_SRC := third_party/llama-swap
$(GOBIN_DIR)/llama-swap: $(shell find $(LLAMA_SWAP_SRC) -type f 2>/dev/null)
	cd $(LLAMA_SWAP_SRC) && GOPATH=$(abspath .cache/go) GOCACHE=$(abspath .cache/go/cache) GOFLAGS='-modcacherw -buildvcs=false' \
	  $(GO) build -trimpath -o $@ \
	  -ldflags='-X main.version=$(LLAMA_SWAP_VERSION) -X main.commit=$(shell printf %.7s $(LLAMA_SWAP_COMMIT))' .

llama-swap: $(GOBIN_DIR)/llama-swap

# pytest-xdist: TEST_WORKERS processes (three more than the cores: many files spend much of their time waiting on
# servers, subprocesses and the browser, and the extra workers fill those waits; on 2 cores 5 workers took
# 188 s where 4 took 193-200 s and 3 took 200-219 s), each given whole test files
# (--dist loadfile), so a module's servers start once; the files in collection order, where tests/conftest.py
# puts the longest first (--no-loadscope-reorder: xdist's own order, most tests first, would start the long
# one-test files last). OPENBLAS_NUM_THREADS=1 and OPENCV_FOR_THREADS_NUM=1: one BLAS and one OpenCV thread per
# worker; their thread pools on top of the workers only contend (a quarter of the model-fitting tests' CPU
# time). PYTHONDONTWRITEBYTECODE= (bytecode written even where the environment says not to): the run starts
# some sixty Python processes besides its workers, and each would compile every module of ours it imports, and
# each worker rewrite every test file's asserts, again (tests/conftest.py rewrites them once, in the controller,
# before the workers collect). The plugins are named (TEST_PLUGINS) instead of found
# by entry point: pytest rewrites the asserts of every module of an entry-point plugin's distribution (all of
# hypothesis, schemathesis and anyio), in each worker. TEST_ARGS adds pytest options, e.g.
# TEST_ARGS='--cov=src --cov-report=term' for the line coverage of src/, or TEST_WORKERS=0 to run in this process.
TEST_WORKERS ?= $(shell echo $$(( $$(nproc) + 3 )))
TEST_ARGS ?=
TEST_PLUGINS = xdist.plugin pytest_asyncio.plugin pytest_timeout anyio.pytest_plugin _hypothesis_pytestplugin \
  schemathesis.pytest.plugin pytest_cov.plugin
test: install art
	bash scripts/test-deps.sh
	@if command -v $(GO) >/dev/null 2>&1; then $(MAKE) --no-print-directory llama-swap; \
	else echo "make test: no Go toolchain, so no real llama-swap: tests/vramctl/test_llama_swap_real.py is skipped"; fi
	OPENBLAS_NUM_THREADS=1 OPENCV_FOR_THREADS_NUM=1 PYTHONDONTWRITEBYTECODE= PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 \
	  MIKU_TEST_LLAMA_SWAP=$(GOBIN_DIR)/llama-swap MIKU_TEST_ART=$(ART)/images \
	  MIKU_TEST_CASCADE=$(BENCH_DATA)/peers/lbpcascade_animeface.xml $(PY) -m pytest -q $(TEST_PLUGINS:%=-p %) \
	  -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(TEST_ARGS)

# The `hysts` backend (hysts' anime-face-detector on PyTorch) and its tests, in a venv of their own: PyTorch's
# CUDA build is gigabytes and stays out of .venv, where `make test` skips these tests. PyTorch's CUDA wheels
# pin other NVIDIA library versions than onnxruntime-gpu's, so this venv takes constraints.txt without its
# nvidia-* lines. anime-face-detector itself declares Python >= 3.12 (its code runs on 3.11) and would bring a
# second cv2 (opencv-python-headless) beside detector-base's: it goes in without its dependencies, which the
# `hysts` extra provides. Its tests build the models with random weights: nothing is downloaded at test time.
HYSTS_VENV ?= .cache/hysts-venv
HYSTS_LOCK := $(HYSTS_VENV)/constraints.txt
$(HYSTS_VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(HYSTS_VENV)
	$(HYSTS_VENV)/bin/python -m pip install -q --upgrade pip
	grep -v '^nvidia-' constraints.txt > $(HYSTS_LOCK)
	$(HYSTS_VENV)/bin/python -m pip install -q -c $(HYSTS_LOCK) -e '.[hysts]' pytest pytest-timeout pytest-asyncio
	$(HYSTS_VENV)/bin/python -m pip install -q --no-deps --ignore-requires-python anime-face-detector==0.1.0
	touch $@

test-hysts: $(HYSTS_VENV)/.installed art
	MIKU_TEST_ART=$(ART)/images $(HYSTS_VENV)/bin/python -m pytest -q tests/facedetect/test_backend_hysts.py

# docker-compose.yml built and run for real, without an NVIDIA GPU and as a GPU host runs it with the card simulated
# (scripts/stack-test.sh):
# its own dockerd, a base image from Debian's archive, the real llama-swap with stand-in model servers.
stack-test: install $(GOBIN_DIR)/llama-swap
	LLAMA_SWAP_BIN=$(GOBIN_DIR)/llama-swap COMPOSE=$(VENV)/bin/docker-compose PYTHON=$(PY) bash scripts/stack-test.sh

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
