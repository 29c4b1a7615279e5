# The two commands of the README, and helpers. Every target sets the venv up on first use.
VENV ?= .venv
PYTHON := $(VENV)/bin/python

.PHONY: setup demo test bench bazel-test

setup:
	@scripts/setup_env.sh $(VENV)

# Main job: FedPara vs plain CNN on real MNIST digits (experiments/demo.py).
demo: setup
	$(PYTHON) -m experiments.demo

# Test suite (fails on any failure, and on "no tests collected").
test: setup
	$(PYTHON) -m pytest -q tests

bench: setup
	$(PYTHON) -m benchmarks.layer_speed
	$(PYTHON) -m benchmarks.tff_round_speed

bazel-test: setup
	bazel test //:layer_tests
