# Entry points; each runs scripts/setup.sh first (idempotent, fast when nothing changed).
.PHONY: setup demo test test-unit test-integration lint format protos bench eval

setup:
	scripts/setup.sh

demo: setup
	.venv/bin/semsearch demo

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/lint-imports

test: lint
	.venv/bin/pytest

test-unit: setup
	.venv/bin/pytest tests/unit

test-integration: setup
	.venv/bin/pytest tests/integration

format:
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

protos:
	scripts/gen-protos.sh

eval: setup
	.venv/bin/semsearch eval embedder --json

bench: setup
	.venv/bin/semsearch bench embedder
