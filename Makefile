# Two commands on a fresh machine with python3 and make: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint package bench screenshots clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) main.py

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

test: lint
	$(PY) -m pytest
	BOT_TEST_DATABASE=postgresql $(PY) -m pytest -m bot -q

package: $(STAMP)
	$(PY) -m bot.packaging.manifest --out appPackage.zip

# docs/img/*.png from the real-browser test (headless Chromium on the Agents Playground; needs node and chromium).
screenshots: $(STAMP)
	SCREENSHOTS_DIR=docs/img REQUIRE_BROWSER=1 $(PY) -m pytest -q -p no:cacheprovider tests/e2e/test_playground_browser.py

bench: $(STAMP)
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info appPackage.zip
