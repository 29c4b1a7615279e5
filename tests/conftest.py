"""Shared test set-up: quiet TensorFlow, seeded randomness, a clean Keras state."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import pytest  # pylint: disable=g-import-not-at-top
import tensorflow as tf

tf.get_logger().setLevel('ERROR')


@pytest.fixture(autouse=True)
def _seeded_clean_keras():
  tf.keras.utils.set_random_seed(1234)
  yield
  tf.keras.mixed_precision.set_global_policy('float32')
  tf.keras.backend.clear_session()
