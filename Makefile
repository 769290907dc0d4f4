# incidentlog — everyday commands. `make run` starts the service on the embedded file store;
# `make test` runs every test (it starts a throwaway PostgreSQL itself).
SHELL := /bin/bash
CARGO ?= cargo
DATA_DIR ?= ./data
LISTEN ?= 127.0.0.1:8080

.PHONY: run test test-fast bench bench-quick bench-scaling drill drill-quick fmt lint demo build release clean-data

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --release --workspace

run:
	$(CARGO) run --release -p incidentlog -- serve --data-dir $(DATA_DIR) --listen $(LISTEN)

test:
	scripts/test.sh

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

demo:
	scripts/demo.sh

bench:
	scripts/bench.sh

bench-quick:
	scripts/bench.sh --quick

bench-scaling:
	scripts/bench.sh --scaling

drill:
	scripts/drill.sh

drill-quick:
	scripts/drill.sh --quick
