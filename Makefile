# The two commands of the README, and helpers. Every target sets the venv up on first use.
VENV ?= .venv
PYTHON := $(VENV)/bin/python

VENV_KERAS3 ?= .venv-keras3

.PHONY: setup demo layer-demo test test-slow bench bazel-test setup-keras3 test-keras3 \
	test-install print-keras3-tests

setup:
	@scripts/setup_env.sh $(VENV)

# The optional Keras 3 environment (JAX backend, no TensorFlow / TFF): requirements-keras3.txt.
setup-keras3:
	@scripts/setup_keras3_env.sh $(VENV_KERAS3)

# Main job: federated original, same-size low-rank and FedPara small CNN on real MNIST digits
# (experiments/compare.py): prints final accuracy and GB of each and writes
# runs/mnist5k_quick/accuracy_vs_gb.png.
demo: setup
	$(PYTHON) -m experiments.compare --flagfile=experiments/configs/mnist5k_quick.cfg

# The centralised Keras-only demo of the layers (experiments/demo.py).
layer-demo: setup
	$(PYTHON) -m experiments.demo

# Test suite (fails on any failure, and on "no tests collected"), one pytest process per core
# (pytest-xdist), without the long end-to-end tests marked slow (pytest.ini), which
# `make test-slow` runs; CI (.ci/run) runs both.
test: setup
	$(PYTHON) -m pytest -q -rs -n logical --dist worksteal --durations=15 -m "not slow" tests

test-slow: setup
	$(PYTHON) -m pytest -q -rs -n logical --dist worksteal -m slow tests

# The layer tests on Keras 3 / JAX: tests/keras3 and the backend-neutral layer modules of tests/
# (the main suite runs them all on Keras 2 too).
KERAS3_TESTS := tests/keras3 tests/test_ranks.py tests/test_init.py tests/test_rank_cap.py
test-keras3: setup-keras3
	KERAS_BACKEND=jax $(VENV_KERAS3)/bin/python -m pytest -q --confcutdir=tests/keras3 \
	    -p tests.keras3.seeding $(KERAS3_TESTS)

print-keras3-tests:
	@echo $(KERAS3_TESTS)

# The wheel as a Keras user installs it (no TFF): Python 3.12 and 3.13 with Keras 3 on JAX, 3.12
# with Keras 3 on TensorFlow 2.21; the Keras 3 layer tests against the installed package.
test-install: setup
	scripts/install_test.sh

bench: setup
	$(PYTHON) -m benchmarks.startup
	$(PYTHON) -m benchmarks.layer_speed
	$(PYTHON) -m benchmarks.tff_round_speed
	$(PYTHON) -m benchmarks.worker_round_speed

bazel-test: setup
	bazel test //:layer_tests
