# The two commands of the README:
#   make demo   set everything up, then compare SimCLR (PyTorch), MoCo v2 (TensorFlow) and BYOL (Keras)
#               on a built-in dataset, 3 epochs each: reports/demo/report.{md,html}, and the
#               README's figure docs/img/compare-quick-curves.png
#   make test   set everything up, then run the whole test suite (what CI runs, via .ci/run)
# and for the book: make docs (serve it locally), make docs-build (build it in strict mode).
# Set-up is one virtual environment in .venv, installed again when requirements.txt or constraints.txt
# changes (a package dropped from them stays: make clean-venv, then make setup, for a clean one).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.requirements-installed

.PHONY: demo test setup lint docs docs-build clean-venv

setup: $(STAMP)

# uv (from the package index, like everything else) installs the pinned set, about 8.4 GB installed,
# in 1 min 30 s on 2 cores where pip took 4 min 48 s (2026-12-01; both compile the .pyc files, so the
# first imports are not slowed); with UV=no, or where uv cannot be installed or fails (e.g. a
# proxy's certificate it does not know), pip does it. uv reads no pip.conf: its index is PyPI's (or UV_INDEX_URL).
UV ?= yes
UV_VERSION := 0.13.9

$(STAMP): requirements.txt constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { \
		echo "$(VENV) runs Python $$($(PY) -c 'import platform; print(platform.python_version())'); the pinned set needs 3.11: install python3.11, then make clean-venv and make again (or make PYTHON=/path/to/python3.11)"; \
		exit 1; }
	@if [ "$(UV)" = yes ] && $(PY) -m pip install --disable-pip-version-check -q uv==$(UV_VERSION) \
		&& $(VENV)/bin/uv pip install --python $(PY) --compile-bytecode -q -r requirements.txt -c constraints.txt; then :; \
	else \
		echo "installing with pip instead"; \
		$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt -c constraints.txt; \
	fi
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m common.compare --epochs 3 --output-dir reports/demo
	cp reports/demo/curves.png docs/img/compare-quick-curves.png

test: $(STAMP)
	@$(PY) -m pytest -n 2 --dist loadgroup -q --durations=15; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: the suite is missing or was filtered out"; fi; \
	exit $$rc

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The book (docs/, mkdocs.yml): `make docs` serves it at http://127.0.0.1:8000 (rebuilt on every
# save); `make docs-build` builds it into site/ in strict mode (a broken link or a page missing from
# the nav fails) and checks the pages' references into the code.
docs: $(STAMP)
	$(VENV)/bin/mkdocs serve

docs-build: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict
	$(PY) docs/check_code_refs.py

clean-venv:
	rm -rf $(VENV)
