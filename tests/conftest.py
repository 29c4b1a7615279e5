"""Shared test set-up: quiet TensorFlow, seeded randomness, a clean Keras state."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import pytest  # pylint: disable=g-import-not-at-top
import tensorflow as tf

from fedpara_tff import runtime

tf.get_logger().setLevel('ERROR')


def pytest_configure(config):
  """A suite started in the background (`make test &`, CI wrappers) inherits SIGINT ignored; the
  TFF workers its tests fork would then never stop on TFF's SIGINT (see `runtime.restore_sigint`).
  `runtime.install()` restores it, stops the workers at exit and starts the watchdog that stops
  them should the session itself be SIGKILLed."""
  del config
  runtime.install()


@pytest.fixture(autouse=True)
def _seeded_clean_keras():
  tf.keras.utils.set_random_seed(1234)
  yield
  tf.keras.mixed_precision.set_global_policy('float32')
  tf.keras.backend.clear_session()
