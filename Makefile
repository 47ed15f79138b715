# The two commands of the README's quickstart are `make demo` and `make test`.
# Everything else here is a convenience for developers.
.PHONY: demo test bootstrap bench clean-workspace

SHELL := /bin/bash
VENV := .venv

bootstrap:
	@scripts/bootstrap.sh

demo: bootstrap
	$(VENV)/bin/cxr demo

test: bootstrap
	$(VENV)/bin/python -m pytest -q

bench: bootstrap
	$(VENV)/bin/python benchmarks/bench_ingest.py

clean-workspace:
	rm -rf workspace
