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
  from fedpara_tff import local_worker  # pylint: disable=g-import-not-at-top
  if local_worker.namespace_command()[0] is None:
    # A host where no private network namespace can be made (a locked-down container): the
    # suite opts in to the open local worker, in so many words, so that its TFF tests can run;
    # the tests of the refusal itself run their binaries without this variable.
    print(f'tests: no private network namespace here ({local_worker.namespace_command()[1]}): '
          f'{local_worker.ALLOW_OPEN_ENV}=1 for this suite.')
    os.environ[local_worker.ALLOW_OPEN_ENV] = '1'
  runtime.install()


@pytest.fixture(autouse=True)
def _seeded_clean_keras():
  tf.keras.utils.set_random_seed(1234)
  yield
  tf.keras.mixed_precision.set_global_policy('float32')
  tf.keras.backend.clear_session()
