.DEFAULT_GOAL := help
.PHONY: help up test lint format typecheck contact-sheet chaos bench audit dlq

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-14s %s\n", $$1, $$2}'

up: ## Run PostgreSQL, RabbitMQ, S3 and the four services locally until Ctrl-C
	uv run python -m devstack up

test: ## Run the whole test suite against real infrastructure
	bash scripts/test.sh

lint: ## Check lint and formatting with ruff
	uv run ruff check . && uv run ruff format --check .

format: ## Format the code and apply safe lint fixes
	uv run ruff format . && uv run ruff check --fix .

typecheck: ## Type-check libs and services with mypy (strict)
	uv run mypy -p contracts -p servicekit -p devstack -p gateway -p projects -p staging -p billing

contact-sheet: ## Render the staging contact sheet to docs/images/contact-sheet.jpg
	uv run python -m staging.contact_sheet --out docs/images/contact-sheet.jpg

chaos: ## Kill services, cut the broker, take each dependency away past the retry ladder while 200 photos are staged; end with the audit
	uv run python -m tests.chaos.run

audit: ## Check the invariants of the stack `make up` runs (images, objects, usage, queues)
	uv run python -m devstack audit $(ARGS)

bench: ## Time 50 photos from creation to staged through a stack of its own
	uv run python bench/stage_throughput.py

dlq: ## Dead-letter queues: make dlq ARGS="list | show QUEUE --id ID | replay QUEUE --all | purge ..."
	uv run python -m servicekit.deadletters $(ARGS)
