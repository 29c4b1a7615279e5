# The two commands of the README, and helpers. Every target sets the venv up on first use.
VENV ?= .venv
PYTHON := $(VENV)/bin/python

.PHONY: setup demo layer-demo test bench bazel-test

setup:
	@scripts/setup_env.sh $(VENV)

# Main job: federated original vs FedPara small CNN on real MNIST digits (experiments/compare.py):
# prints final accuracy and GB of both and writes runs/mnist5k_quick/accuracy_vs_gb.png.
demo: setup
	$(PYTHON) -m experiments.compare --flagfile=experiments/configs/mnist5k_quick.cfg

# The centralised Keras-only demo of the layers (experiments/demo.py).
layer-demo: setup
	$(PYTHON) -m experiments.demo

# Test suite (fails on any failure, and on "no tests collected").
test: setup
	$(PYTHON) -m pytest -q tests

bench: setup
	$(PYTHON) -m benchmarks.layer_speed
	$(PYTHON) -m benchmarks.tff_round_speed
	$(PYTHON) -m benchmarks.worker_round_speed

bazel-test: setup
	bazel test //:layer_tests
