.DEFAULT_GOAL := help
.PHONY: help up test lint format typecheck contact-sheet chaos bench audit dlq

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-14s %s\n", $$1, $$2}'

up: ## Run PostgreSQL, RabbitMQ, S3 and the four services locally until Ctrl-C
	bash scripts/uv.sh run python -m devstack up

test: ## Run the whole test suite against real infrastructure
	bash scripts/test.sh

lint: ## Check lint and formatting with ruff
	bash scripts/uv.sh run ruff check . && bash scripts/uv.sh run ruff format --check .

format: ## Format the code and apply safe lint fixes
	bash scripts/uv.sh run ruff format . && bash scripts/uv.sh run ruff check --fix .

typecheck: ## Type-check libs and services with mypy (strict)
	bash scripts/uv.sh run mypy -p contracts -p servicekit -p devstack -p gateway -p projects -p staging -p billing

contact-sheet: ## Render the staging contact sheet to docs/images/contact-sheet.jpg
	bash scripts/uv.sh run python -m staging.contact_sheet --out docs/images/contact-sheet.jpg

chaos: ## Kill services, cut the broker, take each dependency away past the retry ladder while 200 photos are staged; end with the audit
	bash scripts/uv.sh run python -m tests.chaos.run

audit: ## Check the invariants of the stack `make up` runs (images, objects, usage, queues)
	bash scripts/uv.sh run python -m devstack audit $(ARGS)

bench: ## Time 50 photos from creation to staged through a stack of its own
	bash scripts/uv.sh run python bench/stage_throughput.py

dlq: ## Dead-letter queues: make dlq ARGS="list | show QUEUE --id ID | replay QUEUE --all | purge ..."
	bash scripts/uv.sh run python -m servicekit.deadletters $(ARGS)
