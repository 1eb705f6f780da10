# Everything runs inside .venv; `make test` and `make demo` install first when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint format demo serve clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint --config docker/hadolint.yaml docker/Dockerfile.api docker/Dockerfile.worker
	$(BIN)/python docker/check_compose.py

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info

# The main job on the embedded default (CPU warp engine, no weights): the shared photo dances.
demo: $(STAMP)
	$(BIN)/animate run ../shared/data/reference/woman_street_mimicmotion.jpg \
		../shared/data/driving/dance_musepose.mp4 -o out/demo.mp4 --artifacts out/demo_artifacts

# The job server on the embedded defaults (SQLite jobs + queue, one worker): http://127.0.0.1:8000/
serve: $(STAMP)
	$(BIN)/animate serve --data-dir data
