"""Client executors are interchangeable objects: the driver's work runs where its executor says."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import numpy as np  # pylint: disable=g-import-not-at-top
import pytest
import tensorflow as tf
import tensorflow_federated as tff

import fedpara_tff
from fedpara_tff import client_executors
from fedpara_tff import distributed
from fedpara_tff import in_process_round
from fedpara_tff import local_worker
from fedpara_tff import stateful_round
from fedpara_tff import tf_backend
import keras_layers as kl
from tests import tff_support as ts


def make_datasets():
  """Two clients' datasets with disjoint labels."""
  arrays = ts.label_skewed_arrays(((0, 1, 2), (3, 4, 5)), 40)
  return [ts.to_dataset(x, y) for x, y in arrays]


@pytest.fixture(scope='module')
def datasets():
  return make_datasets()


def two_rounds(client_executor, datasets):
  """Initial state, two rounds and a personalised evaluation of a seeded pFedPara driver."""
  tf.keras.utils.set_random_seed(7)
  weights = [v.numpy() for v in ts.keras_model('pfedpara').trainable_variables]
  driver = fedpara_tff.build_pfedpara_driver(
      lambda: ts.keras_model('pfedpara'), ts.ELEMENT_SPEC, client_learning_rate=0.2,
      client_executor=client_executor)
  state = driver.initialize(weights)
  for _ in range(2):
    state, _ = driver.next(state, ['a', 'b'], datasets)
  evaluation = driver.evaluate(state, ['a', 'b'], datasets)
  return state['global_weights'], driver.local_state('b'), [e['accuracy'] for e in evaluation]


def assert_same(expected, got):
  for want, have in zip(expected[0] + expected[1], got[0] + got[1]):
    np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got[2], expected[2], atol=1e-6)


def test_an_executor_on_its_own_context_runs_the_whole_driver_there(datasets):
  default = two_rounds(None, datasets)   # TFFClients on the installed context
  worker = local_worker.LocalWorker()
  context = distributed.local_context(worker)
  try:
    assert not worker.running()
    own = two_rounds(client_executors.on_context(context), datasets)
    # initialize, next and evaluate all started (and used) the executor's own worker ...
    assert worker.running()
  finally:
    worker.stop()
  # ... and the numbers are the installed context's.
  assert_same(default, own)


def test_device_clients_are_interchangeable_with_tff_clients(datasets):
  assert_same(two_rounds(None, datasets), two_rounds(tf_backend.on_devices(), datasets))


def test_device_clients_never_trace_the_tff_client_update(datasets, monkeypatch):
  """The TF backend trains the clients itself: its driver builds TFF's round (`next`, the
  client update's trace) only when the template is asked for."""
  builds = []
  build_next = stateful_round.build_next
  monkeypatch.setattr(stateful_round, 'build_next',
                      lambda *args: builds.append(1) or build_next(*args))
  driver = fedpara_tff.build_fedavg_driver(lambda: ts.keras_model('fedpara'), ts.ELEMENT_SPEC,
                                           client_executor=tf_backend.on_devices())
  state = driver.initialize()
  state, _ = driver.next(state, ['a', 'b'], datasets)
  driver.evaluate(state, ['a', 'b'], datasets)
  assert not builds
  process = driver.iterative_process
  assert builds == [1] and process is driver.iterative_process
  assert process.next.type_signature.parameter[0] == process.initialize.type_signature.result


def _refusing_context():
  """A TFF context whose local worker refuses to start: any TFF computation run on it fails."""
  return distributed.local_context(local_worker.NoWorker('this test'))


def test_the_tf_backend_runs_a_whole_driver_without_any_tff_computation(datasets):
  """Issue 37: the TF backend ran its aggregation, server step, metrics, initial state and
  evaluation as TFF computations, so a `--backend=tf` run started a TFF worker."""
  expected = two_rounds(None, datasets)
  with client_executors.running_on(_refusing_context()):
    got = two_rounds(tf_backend.on_devices(), datasets)
    # The guard is real: the TFF executor's first computation is refused in one line.
    with pytest.raises(local_worker.WorkerIsolationError,
                       match=r'^this test runs without a local TFF worker, yet a TFF computation '
                             r'asked for one: refused, nothing was started\.$'):
      two_rounds(None, datasets)
  assert_same(expected, got)


def _uploads_of_three_clients(layout):
  """Three clients' uploads (the second one with a NaN) and their weights (the third 0)."""
  rng = np.random.default_rng(3)
  uploads = [[rng.normal(size=s.shape).astype(np.float32) for s in layout.global_specs]
             for _ in range(3)]
  uploads[1][0][0] = np.nan
  return uploads, [np.float32(2.0), np.float32(5.0), np.float32(0.0)]


@pytest.mark.parametrize('options', [dict(), dict(server_optimizer='adam', server_learning_rate=0.1)],
                         ids=['fedavg', 'fedadam'])
def test_the_in_process_server_half_returns_what_tff_returns(options):
  driver = fedpara_tff.build_pfedpara_driver(lambda: ts.keras_model('pfedpara'), ts.ELEMENT_SPEC,
                                             **options)
  round_ = driver.round
  in_process = in_process_round.InProcessRound(round_)
  state = round_.initialize()
  state['global_weights'] = [np.full(s.shape, 0.5, np.float32)
                             for s in round_.layout.global_specs]
  own_state = in_process.initialize()
  tf.nest.assert_same_structure(state, own_state)
  uploads, weights = _uploads_of_three_clients(round_.layout)
  sums = ([np.float32(20), np.float32(30), np.float32(0)], [np.float32(40.0), np.float32(70.0),
          np.float32(0.0)], [np.float32(9), np.float32(13), np.float32(0)], [0, 1, 0])
  expected = round_.finish_round(state, uploads, weights, *sums)
  got = in_process.finish_round(state, uploads, weights, *sums)
  tf.nest.assert_same_structure(expected, got)
  for want, have in zip(tf.nest.flatten(expected), tf.nest.flatten(got)):
    np.testing.assert_allclose(have, want, rtol=1e-6, atol=1e-7)
  new_state, metrics = got
  # By hand: the NaN upload is dropped (weight 0), the third weighs 0, so the mean is the first
  # client's upload; plain FedAvg at server lr 1 moves x to x - mean.
  if not options:
    for x, u, new in zip(state['global_weights'], uploads[0], new_state['global_weights']):
      np.testing.assert_allclose(new, x - u, rtol=1e-6)
  assert metrics['aggregator']['clients'] == dict(non_finite_clients=1, zero_weight_clients=1)
  assert metrics['train']['loss'] == pytest.approx(110 / 50)
  assert metrics['train']['accuracy'] == pytest.approx(22 / 50)
  assert new_state['round_num'] == 1


@pytest.mark.filterwarnings('ignore:quantization_bits=8 changes nothing')
def test_a_round_whose_aggregation_is_tff_s_runs_its_server_half_on_tff(datasets):
  """Quantization (TFF's encoder) cannot run in process: the TF backend says so and uses TFF."""
  driver = fedpara_tff.build_fedavg_driver(lambda: ts.keras_model('fedpara'), ts.ELEMENT_SPEC,
                                           quantization_bits=8,
                                           client_executor=tf_backend.on_devices())
  assert driver.client_executor.uses_local_runtime
  assert driver.client_executor.server is driver.round
  assert in_process_round.why_not_in_process(driver.round).startswith(
      "quantization_bits=8 is TFF's encoder")
  with pytest.raises(ValueError, match="aggregation cannot run in this process: quantization"):
    in_process_round.InProcessRound(driver.round)
  state, metrics = driver.next(driver.initialize(), ['a', 'b'], datasets)
  assert state['round_num'] == 1 and np.isfinite(metrics['train']['loss'])


def test_executor_factories_build_the_named_executor():
  driver = fedpara_tff.build_fedavg_driver(lambda: ts.keras_model('fedpara'), ts.ELEMENT_SPEC,
                                           client_executor=client_executors.on_context(None))
  assert isinstance(driver.client_executor, client_executors.TFFClients)
  assert driver.client_executor.context is None
  driver = fedpara_tff.build_fedavg_driver(lambda: ts.keras_model('fedpara'), ts.ELEMENT_SPEC,
                                           client_executor=tf_backend.on_devices())
  assert isinstance(driver.client_executor, tf_backend.DeviceClients)


def test_initialize_and_evaluate_run_on_the_executors_context(datasets):
  worker = local_worker.LocalWorker()
  driver = fedpara_tff.build_pfedpara_driver(
      lambda: ts.keras_model('pfedpara'), ts.ELEMENT_SPEC,
      client_executor=client_executors.on_context(distributed.local_context(worker)))
  try:
    state = driver.initialize()
    assert worker.running()
    worker.stop()
    driver.evaluate(state, ['a'], datasets[:1])
    assert worker.running()
  finally:
    worker.stop()


def test_a_tff_trace_after_an_eager_keras_2_model_leaves_that_model_unusable():
  """Keras 2 swaps a layer class to its v1 bases when a layer is made in a TF1 graph (a TFF
  computation's body), so an eager model made before a trace fails when called after it, until a
  layer of the class is made eagerly again; why `TFFClients` builds TFF's round with its driver
  (docs/DESIGN.md, "TFF runtime facts")."""
  x = np.ones((2, 4), np.float32)
  for layer in (lambda: tf.keras.layers.Dense(3), lambda: kl.FedParaDense(3, rank=2)):
    def model():
      return tf.keras.Sequential([tf.keras.Input((4,)), layer()])  # pylint: disable=cell-var-from-loop
    eager = model()
    eager(x)
    try:
      tff.tensorflow.computation(lambda: tf.size(model().trainable_variables[0]))
      with pytest.raises(ValueError, match='invalid state'):
        eager(x)
    finally:
      model()   # made eagerly: the class's bases are v2 again, for the tests after this one
    assert eager(x).shape == (2, 3)
