# Everything runs inside .venv; `make test` and `make demo` install first when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint format demo serve clean browser mutation

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	# the body model's data (~800 MB in ~/.cache/anny, about 2 minutes once per machine), so no run pays it
	$(BIN)/python -m animate.body.cache --build
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP) browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The web page test drives Debian's Chromium (no browser download): installed here when missing and we are
# root with apt-get; otherwise that test skips (and fails under ANIMATE_REQUIRE_SERVICES=1, as in CI).
CHROMIUM := /usr/bin/chromium
browser:
	@if [ ! -x $(CHROMIUM) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's chromium for the web page test"; \
		( apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium ) \
			>/tmp/animate-chromium-install.log 2>&1 \
		|| { tail -n 20 /tmp/animate-chromium-install.log; echo "chromium could not be installed"; }; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint --config docker/hadolint.yaml docker/Dockerfile.api docker/Dockerfile.worker
	$(BIN)/python docker/check_compose.py
	if command -v docker-compose >/dev/null 2>&1; then docker-compose -f docker/compose.yaml config --quiet; fi

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Mutation testing (mutmut) per module of pyproject's [tool.mutmut.modules], in build/mutation/: e.g.
# `make mutation MODULE=animate/media MUTATION_ARGS="--budget 600"`; see benchmarks/MUTATION.md.
mutation: $(STAMP)
	$(BIN)/python benchmarks/mutation.py $(MODULE) $(MUTATION_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info

# The main job on the embedded default (CPU warp engine, no weights): the shared photo dances.
demo: $(STAMP)
	$(BIN)/animate run ../shared/data/reference/woman_street_mimicmotion.jpg \
		../shared/data/driving/dance_musepose.mp4 -o out/demo.mp4 --artifacts out/demo_artifacts

# The job server on the embedded defaults (SQLite jobs + queue, one worker): http://127.0.0.1:8000/
# Uploads, outputs and the job/queue databases go to ./data (ignored by git).
serve: $(STAMP)
	$(BIN)/animate serve --data-dir data
