# Two commands on a fresh machine:  make demo  (the main job)  and  make test  (the test suite).
SHELL := /bin/bash
DATA_DIR ?= $(or $(ASMG_DATA_DIR),$(shell [ -d ../shared/datasets/ml-100k ] && echo ../shared/datasets/ml-100k || echo data/ml-100k))

.PHONY: setup demo test lint experiment bench clean

setup:
	@scripts/bootstrap

demo: setup
	.venv/bin/asmg demo --data-dir $(DATA_DIR)

experiment: setup
	.venv/bin/asmg experiment --data-dir $(DATA_DIR) --out runs/experiment

test: setup
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -q

lint: setup
	.venv/bin/ruff check .

bench: setup
	.venv/bin/python bench/bench_tmall_scale.py

clean:
	-.venv/bin/asmg kafka stop
	rm -rf runs .cache
