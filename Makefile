# The two commands of the README: `make demo` and `make test`. Both work on a fresh clone of a fresh
# Debian machine: they create .venv, install the project, and fetch the sample art first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ART    ?= .cache/art
OUT    ?= out/demo
BENCH_DATA ?= ../shared/bench
SCENES ?= .cache/scenes

.PHONY: help install art scenes demo test test-fast bench lint clean

help:
	@echo "make demo   - detect faces in the sample art and make an avatar (embedded defaults, no config)"
	@echo "make test   - run the whole test suite (installs what it needs first)"
	@echo "make bench  - run the benchmarks and rewrite bench/RESULTS.md"
	@echo "make scenes - compose the labelled scene sets for detection/crop benchmarks (.cache/scenes)"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all,test]'
	touch $@

install: $(VENV)/.installed

art: $(ART)/.complete

$(ART)/.complete: scripts/fetch-art.sh
	bash scripts/fetch-art.sh $(ART)

# Labelled scene sets (tune/test) composed from the fetched art; see bench/scenes.py.
scenes: $(SCENES)/.complete

$(SCENES)/.complete: $(ART)/.complete bench/scenes.py tests/labels/renpy.json | $(VENV)/.installed
	$(PY) bench/scenes.py --art $(ART)/images --out $(SCENES)

demo: install art
	MIKU_DATA_DIR=$(OUT)/data $(VENV)/bin/mikubot pfp change --dry-run --source local:$(ART)/images --out $(OUT)/avatar.png

test: install art
	bash scripts/test-deps.sh
	MIKU_TEST_ART=$(ART)/images MIKU_TEST_CASCADE=$(BENCH_DATA)/peers/lbpcascade_animeface.xml $(PY) -m pytest -q

bench: install art
	$(PY) bench/detect.py --art $(ART)/images --bench-data $(BENCH_DATA)

clean:
	rm -rf $(VENV) .cache out .pytest_cache
