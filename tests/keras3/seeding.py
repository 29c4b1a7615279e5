"""Seeded randomness and a clean Keras state for the layer tests that run on either Keras.

The conftest of `tests/keras3` uses it; `make test-keras3` also loads it as a plugin (`-p`) for
the backend-neutral layer test modules of `tests/` it runs there (the main suite's conftest needs
TensorFlow and TFF and is not loaded: `--confcutdir=tests/keras3`).
"""

import importlib.metadata
import os

# The tests compare with float64 numpy at float32 tolerances; on an NVIDIA GPU, JAX's default
# float32 matmul precision is TF32 (about 1e-3 relative), so on Keras 3 they ask for full float32,
# before Keras imports JAX. (Keras 2's environment has JAX 0.4.13, which names it otherwise and
# does not run the layers.)
if int(importlib.metadata.version('keras').split('.')[0]) >= 3:
  os.environ.setdefault('JAX_DEFAULT_MATMUL_PRECISION', 'highest')

import pytest  # pylint: disable=g-import-not-at-top

from keras_layers.backend import keras  # pylint: disable=g-import-not-at-top


@pytest.fixture(autouse=True)
def _seeded_clean_keras():
  keras.utils.set_random_seed(1234)
  yield
  keras.backend.clear_session()
