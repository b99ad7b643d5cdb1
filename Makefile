# Two commands on a fresh machine with python3 and make: `make run` and `make test`; `make playground` to chat.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
NODE_DIR := tests/node
# What each target needs, installed once (again when setup.cfg changes): running needs only the runtime
# dependencies; the test and benchmark extras come with `make test` / `make bench`.
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
BENCH_STAMP := $(VENV)/.installed-bench
NODE_STAMP := $(NODE_DIR)/node_modules/.installed

.PHONY: run playground test lint package bench screenshots image clean

$(RUN_STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing the bot's dependencies into $(VENV) (once; about 30 s)…"
	@$(PY) -m pip install --quiet --disable-pip-version-check -e . >$(VENV)/install.log 2>&1 \
		|| { cat $(VENV)/install.log; exit 1; }
	@touch $@

$(TEST_STAMP): $(RUN_STAMP)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

$(BENCH_STAMP): $(RUN_STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	touch $@

# The pinned Agents Playground (and the manifest/card schema tools the tests use).
$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	@command -v npm >/dev/null || { echo "make playground needs node and npm (Node.js 20+)"; exit 1; }
	@echo "Installing the Agents Playground into $(NODE_DIR)/node_modules (once)…"
	@cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error >/dev/null
	@touch $@

run: $(RUN_STAMP)
	@$(PY) main.py

# The bot and the Microsoft 365 Agents Playground together; prints the URL to open; Ctrl-C stops both.
playground: $(RUN_STAMP) $(NODE_STAMP)
	@$(PY) local_playground.py

lint: $(TEST_STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

test: lint
	$(PY) -m pytest
	BOT_TEST_DATABASE=postgresql $(PY) -m pytest -m bot -q

package: $(RUN_STAMP)
	$(PY) -m bot.packaging.manifest --out appPackage.zip

# docs/img/*.png from the real-browser test (headless Chromium on the Agents Playground; needs node and chromium).
screenshots: $(TEST_STAMP)
	SCREENSHOTS_DIR=docs/img REQUIRE_BROWSER=1 $(PY) -m pytest -q -p no:cacheprovider tests/e2e/test_playground_browser.py

bench: $(BENCH_STAMP)
	for b in bench/*.py; do $(PY) $$b || exit 1; done

# The container image (Containerfile) with podman, or docker when podman is not there.
IMAGE ?= price-watch:latest
CONTAINER_ENGINE ?= $(shell command -v podman 2>/dev/null || command -v docker 2>/dev/null)
BASE ?=
BUILD_FLAGS ?=
image:
	@test -n "$(CONTAINER_ENGINE)" || { echo "make image needs podman or docker"; exit 1; }
	$(CONTAINER_ENGINE) build $(if $(findstring podman,$(notdir $(CONTAINER_ENGINE))),--format docker) \
		$(if $(BASE),--build-arg BASE=$(BASE)) $(BUILD_FLAGS) -f Containerfile -t $(IMAGE) .

clean:
	rm -rf $(VENV) build *.egg-info appPackage.zip
