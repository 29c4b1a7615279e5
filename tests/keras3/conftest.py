"""Set-up of the any-Keras layer tests: seeded randomness and a clean Keras state, through
whichever Keras `keras_layers.backend` picked (the main suite's conftest, which needs TensorFlow
and TFF, is not loaded here: `make test-keras3` runs with `--confcutdir=tests/keras3`)."""

import pytest

from keras_layers.backend import keras


@pytest.fixture(autouse=True)
def _seeded_clean_keras():
  keras.utils.set_random_seed(1234)
  yield
  keras.backend.clear_session()
