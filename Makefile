# Two commands on a fresh machine:  make demo  (the main job)  and  make test  (the test suite).
SHELL := /bin/bash
DATA_DIR ?= $(or $(ASMG_DATA_DIR),$(shell [ -d ../shared/datasets/ml-100k ] && echo ../shared/datasets/ml-100k || echo data/ml-100k))

.PHONY: setup demo test lint experiment bench monitoring mutation clean

setup:
	@scripts/bootstrap

demo: setup
	.venv/bin/asmg demo --data-dir $(DATA_DIR)

experiment: setup
	.venv/bin/asmg experiment --data-dir $(DATA_DIR) --out runs/experiment

test: setup
	@scripts/install-prometheus
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -q -n 2 --dist loadgroup

lint: setup
	.venv/bin/ruff check .

# The monitoring set-up against a real Prometheus (Debian: apt-get install -y prometheus): alert rules
# (promtool check + unit tests), the dashboard's queries, and every referenced metric scraped end to end.
monitoring: setup
	promtool check rules deploy/prometheus/rules.yml
	cd deploy/prometheus && promtool test rules rules_test.yml
	.venv/bin/python -m pytest -q tests/test_alert_rules.py tests/test_dashboard.py tests/test_metrics_prometheus.py

# Mutation testing of the core modules against their fast tests (mutmut, installed on first use; see
# [tool.mutmut] in pyproject.toml). Long: ~3,000 mutants, 1-3 hours on 2 cores; the cheapest run first and
# an interrupted run keeps its results (`.venv/bin/mutmut results`). MUTMUT_CHILDREN sets the parallelism.
mutation: setup
	scripts/mutation

bench: setup
	.venv/bin/python bench/bench_tmall_scale.py

clean:
	-.venv/bin/asmg kafka stop
	rm -rf runs .cache
