"""fedpara_tff: factor aggregator and learning processes on the TFF C++ runtime."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import numpy as np  # pylint: disable=g-import-not-at-top
import pytest
import tensorflow as tf

import fedpara_tff
import keras_layers as kl
import tensorflow_federated as tff
from tests import tff_support as ts

SIZES = (30, 47, 23)


@pytest.fixture(scope='module')
def clients():
  return [ts.to_dataset(x, y) for x, y in ts.client_arrays(SIZES)]


@pytest.fixture(scope='module')
def stock_fedavg():
  """An unmodified TFF builder call, with our aggregator, as a user writes it."""
  return tff.learning.algorithms.build_weighted_fed_avg(
      ts.model_fn,
      client_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=0.1),
      server_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=1.0),
      model_aggregator=fedpara_tff.factor_aggregator(keras_model_fn=ts.keras_model))


def train_locally(initial, x, y, learning_rate):
  """The client work of FedAvg, by hand: plain SGD over the batches, from `initial`."""
  model = ts.keras_model()
  model.set_weights(initial)
  loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  for start in range(0, len(y), ts.BATCH):
    with tf.GradientTape() as tape:
      loss = loss_fn(y[start:start + ts.BATCH], model(x[start:start + ts.BATCH], training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    for v, g in zip(model.trainable_variables, grads):
      v.assign_sub(learning_rate * g)
  return [v.numpy() for v in model.trainable_variables]


def weighted_average_of_local_training(initial, learning_rate, uniform=False):
  local = [train_locally(initial, x, y, learning_rate) for x, y in ts.client_arrays(SIZES)]
  weights = np.ones(len(SIZES)) if uniform else np.array(SIZES, np.float64)
  weights = weights / weights.sum()
  return [sum(w * l[i] for w, l in zip(weights, local)) for i in range(len(initial))]


def assert_weights_close(actual, expected):
  for got, want in zip(actual, expected):
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


def trainable(process, state):
  return [np.asarray(w) for w in process.get_model_weights(state).trainable]


def test_stock_fedavg_with_factor_aggregator_is_the_weighted_average(stock_fedavg, clients):
  state = stock_fedavg.initialize()
  initial = trainable(stock_fedavg, state)
  output = stock_fedavg.next(state, clients)
  assert_weights_close(trainable(stock_fedavg, output.state),
                       weighted_average_of_local_training(initial, 0.1))
  comm = output.metrics['aggregator']['communication']
  assert comm['elements_uploaded_per_client'] == ts.FEDPARA_ELEMENTS == 814
  assert comm['bytes_uploaded_per_client'] == 814 * 4
  assert comm['bytes_uploaded'] == 3 * 814 * 4
  assert comm['paper_bytes_both_directions'] == 2 * 3 * 814 * 4
  assert output.metrics['aggregator']['clients'] == {'non_finite_clients': 0,
                                                     'zero_weight_clients': 0}


def _assert_one_round_is_the_uniform_mean(process, clients):
  """One round of lr-0.1 client SGD lands on the unweighted mean; all 814 elements uploaded."""
  state = process.initialize()
  initial = trainable(process, state)
  output = process.next(state, clients)
  assert_weights_close(trainable(process, output.state),
                       weighted_average_of_local_training(initial, 0.1, uniform=True))
  assert output.metrics['aggregator']['communication']['bytes_uploaded'] == 3 * 814 * 4
  return output


def test_unweighted_stock_builder_takes_the_unweighted_factor_aggregator(clients):
  process = tff.learning.algorithms.build_unweighted_fed_avg(
      ts.model_fn,
      client_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=0.1),
      model_aggregator=fedpara_tff.factor_aggregator(keras_model_fn=ts.keras_model,
                                                     weighted=False))
  _assert_one_round_is_the_uniform_mean(process, clients)


def test_unweighted_fed_prox_with_a_differential_privacy_inner_factory(clients):
  dp = tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed(
      noise_multiplier=0.0, clients_per_round=3, clip=100.0)
  process = tff.learning.algorithms.build_unweighted_fed_prox(
      ts.model_fn, proximal_strength=0.0,
      client_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=0.1),
      model_aggregator=fedpara_tff.factor_aggregator(inner=dp, keras_model_fn=ts.keras_model,
                                                     weighted=False))
  # No noise and a clip far above the update norms: the DP sum divided by 3 is the plain mean.
  output = _assert_one_round_is_the_uniform_mean(process, clients)
  assert 'dp' in output.metrics['aggregator']['inner']


def test_inner_zeroing_and_clipping_chain_runs_inside_the_process(clients):
  inner = tff.aggregators.zeroing_factory(
      50.0, tff.aggregators.clipping_factory(5.0, tff.aggregators.MeanFactory()))
  process = fedpara_tff.build_fedpara_process(ts.model_fn, keras_model_fn=ts.keras_model,
                                              aggregator=inner)
  output = process.next(process.initialize(), clients)
  measurements = output.metrics['aggregator']
  assert measurements['inner']['zeroing_norm'] == 50.0
  assert measurements['inner']['zeroed_count'] == 0
  assert measurements['communication']['bytes_uploaded'] == 3 * 814 * 4


def test_client_with_no_examples_completes_the_round_with_weight_zero(stock_fedavg, clients):
  x, y = ts.client_arrays((1,))[0]
  empty = ts.to_dataset(x[:0], y[:0])
  state = stock_fedavg.initialize()
  initial = trainable(stock_fedavg, state)
  output = stock_fedavg.next(state, clients + [empty])
  assert_weights_close(trainable(stock_fedavg, output.state),
                       weighted_average_of_local_training(initial, 0.1))
  assert output.metrics['aggregator']['clients'] == {'non_finite_clients': 0,
                                                     'zero_weight_clients': 1}
  assert output.metrics['aggregator']['communication']['bytes_uploaded'] == 4 * 814 * 4


# FedYogi and FedAdagrad (server optimizers of the same builder as FedAdam) in the slow suite.
@pytest.mark.parametrize('algorithm', [
    pytest.param(a, marks=pytest.mark.slow) if a in ('fedyogi', 'fedadagrad') else a
    for a in fedpara_tff.ALGORITHMS if a not in ('fedprox', 'scaffold', 'feddyn')])
def test_fedpara_process_lowers_the_loss(clients, algorithm):
  server_lr = {'fedadam': 0.05, 'fedyogi': 0.05, 'fedadagrad': 0.2}.get(algorithm, 1.0)
  process = fedpara_tff.build_fedpara_process(
      ts.model_fn, algorithm=algorithm, client_learning_rate=0.3,
      server_learning_rate=server_lr, keras_model_fn=ts.keras_model)
  evaluation = fedpara_tff.build_evaluation(ts.model_fn)

  def loss(state):
    eval_state = evaluation.set_model_weights(evaluation.initialize(),
                                              process.get_model_weights(state))
    return evaluation.next(eval_state, clients).metrics['client_work']['eval'][
        'current_round_metrics']['loss']

  state = process.initialize()
  before = loss(state)
  for _ in range(6):
    output = process.next(state, clients)
    state = output.state
  after = loss(state)
  assert after < before - 0.05
  assert output.metrics['distributor'] == {'bytes_downloaded': 3 * 814 * 4,
                                           'bytes_downloaded_per_client': 814 * 4}
  assert output.metrics['aggregator']['communication']['bytes_uploaded'] == 3 * 814 * 4


def test_tffs_mime_lite_takes_any_base_optimizer_and_server_momentum():
  """TFF's MIME-lite builder takes an Adam base optimizer and server SGD momentum, which the
  shared round's MIME-lite (SGD only, server step without momentum) refuses."""
  for options in (dict(client_optimizer='adam'), dict(server_momentum=0.9)):
    process = fedpara_tff.build_fedpara_process(ts.model_fn, algorithm='mimelite',
                                                keras_model_fn=ts.keras_model, **options)
    assert process.next.type_signature.parameter is not None
  with pytest.raises(ValueError, match=r'server_momentum must be a number in \[0, 1\); got 1.5'):
    fedpara_tff.build_fedpara_process(ts.model_fn, algorithm='mimelite', server_momentum=1.5)


def test_learning_rate_decays_per_round(clients):
  process = fedpara_tff.build_fedpara_process(ts.model_fn, client_learning_rate=0.4,
                                              lr_decay=0.5, keras_model_fn=ts.keras_model)
  state = process.initialize()
  for round_num in range(3):
    initial = trainable(process, state)
    state = process.next(state, clients).state
    # Round r trains the clients with 0.4 * 0.5**r.
    assert_weights_close(trainable(process, state),
                         weighted_average_of_local_training(initial, 0.4 * 0.5**round_num))


def aggregate(factory, values, weights):
  value_type = tff.types.tensorflow_to_type([tf.TensorSpec(v.shape, tf.float32)
                                             for v in values[0]])
  process = factory.create(value_type, tff.TensorType(np.float32))
  return process.next(process.initialize(), values, weights)


def test_non_finite_and_empty_clients_are_not_folded_in_and_are_counted():
  good = [np.full((3,), 2.0, np.float32), np.ones((2, 2), np.float32)]
  nan = [np.array([1.0, np.nan, 0.0], np.float32), np.ones((2, 2), np.float32)]
  inf = [np.zeros((3,), np.float32), np.full((2, 2), np.inf, np.float32)]
  empty = [np.zeros((3,), np.float32), np.zeros((2, 2), np.float32)]
  output = aggregate(fedpara_tff.factor_aggregator(), [good, nan, inf, empty],
                     [5.0, 7.0, 1.0, 0.0])
  np.testing.assert_array_equal(output.result[0], good[0])
  np.testing.assert_array_equal(output.result[1], good[1])
  assert output.measurements['clients'] == {'non_finite_clients': 2, 'zero_weight_clients': 1}


def test_local_variables_never_enter_the_aggregator_and_come_back_zero():
  mask = [True, False, True]
  factory = fedpara_tff.factor_aggregator(mask=mask)
  values = [[np.ones(4, np.float32), np.full(6, np.nan, np.float32), np.ones(2, np.float32)]]
  output = aggregate(factory, values, [1.0])
  # The NaN sits in the local tensor, so it is never looked at: the client still counts.
  assert output.measurements['clients']['non_finite_clients'] == 0
  np.testing.assert_array_equal(output.result[1], np.zeros(6))
  assert output.measurements['communication']['bytes_uploaded_per_client'] == (4 + 2) * 4


def test_quantized_upload_counts_payload_plus_range_per_tensor():
  shapes = [(300, 4), (50,), (30, 30)]
  values = [[np.random.default_rng(i).normal(size=s).astype(np.float32) for s in shapes]
            for i in range(2)]
  output = aggregate(fedpara_tff.factor_aggregator(quantization_bits=8, quantization_threshold=100),
                     values, [1.0, 3.0])
  # 1200 and 900 elements at 8 bits are packed 28 bits per 4-byte int32, plus 8 bytes of
  # min/max: 4 * ceil(9600 / 28) + 8 = 1380 and 4 * ceil(7200 / 28) + 8 = 1040; 50 stay float32.
  expected = 1380 + 1040 + 50 * 4
  comm = output.measurements['communication']
  assert comm['bytes_uploaded_per_client'] == expected
  assert comm['bytes_uploaded'] == 2 * expected
  # About a quarter of float32 for the quantized tensors, times the 32/28 packing overhead.
  assert (1380 + 1040) / ((1200 + 900) * 4) == pytest.approx(0.25 * 32 / 28, abs=0.005)
  mean = [(values[0][i] + 3 * values[1][i]) / 4 for i in range(3)]
  for got, want in zip(output.result, mean):
    np.testing.assert_allclose(got, want, atol=0.05 * np.abs(want).max())


def test_quantization_threshold_reaches_the_process_and_a_no_op_setting_warns(clients):
  # The tiny test model's tensors are all under TFF's default threshold of 20,000 elements:
  # quantization_bits alone used to change nothing, silently.
  with pytest.warns(UserWarning, match=r'quantization_bits=8 changes nothing on this model: its '
                                       r'largest travelling tensor has \d+ elements'):
    plain = fedpara_tff.build_fedpara_process(ts.model_fn, quantization_bits=8)
  lowered = fedpara_tff.build_fedpara_process(ts.model_fn, quantization_bits=8,
                                              quantization_threshold=10)
  def upload(process):
    output = process.next(process.initialize(), clients)
    return output.metrics['aggregator']['communication']['bytes_uploaded']
  assert upload(plain) == 3 * 814 * 4           # float32, as before
  assert upload(lowered) < upload(plain)


def test_bad_inputs_are_named():
  with pytest.raises(ValueError, match=r"algorithm must be one of .*; got 'sgd'"):
    fedpara_tff.build_fedpara_process(ts.model_fn, algorithm='sgd')
  with pytest.raises(ValueError, match=r'client_learning_rate must be a finite number > 0; got 0'):
    fedpara_tff.build_fedpara_process(ts.model_fn, client_learning_rate=0)
  with pytest.raises(ValueError, match=r'server_learning_rate must be a finite number > 0; got -1'):
    fedpara_tff.build_fedpara_process(ts.model_fn, server_learning_rate=-1)
  with pytest.raises(ValueError, match=r"algorithm='scaffold' has no TFF 0.87 builder; it runs "
                                       r"on fedpara_tff.build_fedavg_driver"):
    fedpara_tff.build_fedpara_process(ts.model_fn, algorithm='scaffold')
  with pytest.raises(ValueError, match=r"lr_decay=0.9 is not available with 'mimelite'"):
    fedpara_tff.build_fedpara_process(ts.model_fn, algorithm='mimelite', lr_decay=0.9)
  plain = lambda: tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(2)])
  with pytest.raises(ValueError, match=r"model 'sequential.*' has no factorised layer"):
    fedpara_tff.factor_aggregator(keras_model_fn=plain)
  with pytest.raises(ValueError, match=r'the travel mask has 2 entries but the model update has 3'):
    aggregate(fedpara_tff.factor_aggregator(mask=[True, False]),
              [[np.ones(1, np.float32)] * 3], [1.0])
  def batch_norm_model_fn():
    model = tf.keras.Sequential([tf.keras.Input((ts.FEATURES,)), kl.FedParaDense(8, rank=2),
                                 tf.keras.layers.BatchNormalization(), tf.keras.layers.Dense(10)])
    return tff.learning.models.from_keras_model(
        model, loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        input_spec=ts.ELEMENT_SPEC)
  with pytest.raises(ValueError, match=r'2 non-trainable variable\(s\), which TFF 0.87\'s builders '
                                       r'.* use GroupNormalization'):
    fedpara_tff.build_fedpara_process(batch_norm_model_fn)
  with pytest.raises(ValueError, match=r'quantization_bits must be an integer in \[1, 16\]; got 0'):
    fedpara_tff.factor_aggregator(quantization_bits=0)


@pytest.mark.parametrize('elements, bits', [(1200, 8), (900, 8), (1001, 4), (333, 2), (50, 16)])
def test_quantized_byte_formula_matches_the_tff_encoder_output(elements, bits):
  from tensorflow_model_optimization.python.core.internal import tensor_encoding as te  # pylint: disable=g-import-not-at-top
  from fedpara_tff import communication  # pylint: disable=g-import-not-at-top
  encoder = te.encoders.uniform_quantization(bits)
  params = encoder.get_params(encoder.initial_state())[0]
  x = tf.constant(np.random.default_rng(0).normal(size=elements).astype(np.float32))
  encoded = tf.nest.flatten(encoder.encode(x, params)[0])
  sent = sum(t.dtype.size * t.shape.num_elements() for t in encoded)
  assert communication.tensor_bytes((elements,), quantization_bits=bits) == sent


def _functional(parameterization='fedpara'):
  """TFF's functional path: `functional_model_from_keras` of the same Keras model."""
  return tff.learning.models.functional_model_from_keras(
      ts.keras_model(parameterization),
      tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), ts.ELEMENT_SPEC)


def test_functional_model_in_stock_fedavg_is_the_weighted_average_with_the_same_bytes(
    stock_fedavg, clients):
  functional = _functional()
  process = tff.learning.algorithms.build_weighted_fed_avg(
      functional, client_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=0.1),
      server_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=1.0),
      model_aggregator=fedpara_tff.factor_aggregator(keras_model_fn=ts.keras_model))
  state = process.initialize()
  initial = trainable(process, state)
  output = process.next(state, clients)
  assert_weights_close(trainable(process, output.state),
                       weighted_average_of_local_training(initial, 0.1))
  variable_model = stock_fedavg.next(stock_fedavg.initialize(), clients)
  assert (output.metrics['aggregator']['communication']
          == variable_model.metrics['aggregator']['communication'])
  assert output.metrics['aggregator']['communication']['bytes_uploaded'] == 3 * 814 * 4


def test_fedpara_process_takes_a_functional_model_with_local_factors(clients):
  """pFedPara on the functional path: local factors never travel (the server keeps their
  initial values) and the bytes equal the VariableModel process's."""
  def pfedpara_model_fn():
    return fedpara_tff.keras_model_fn_to_tff(lambda: ts.keras_model('pfedpara'), ts.ELEMENT_SPEC)()

  processes = [fedpara_tff.build_fedpara_process(
      model_fn, client_learning_rate=0.1, keras_model_fn=lambda: ts.keras_model('pfedpara'))
      for model_fn in (_functional('pfedpara'), pfedpara_model_fn)]
  outputs = [p.next(p.initialize(), clients) for p in processes]
  assert (outputs[0].metrics['aggregator']['communication']
          == outputs[1].metrics['aggregator']['communication'])
  assert outputs[0].metrics['distributor'] == outputs[1].metrics['distributor']
  functional, state = processes[0], outputs[0].state
  mask = fedpara_tff.travel_mask(ts.keras_model('pfedpara'))
  before = trainable(functional, functional.initialize())
  after = trainable(functional, state)
  for sent, b, a in zip(mask, before, after):
    assert np.array_equal(a, b) != sent   # only the travelling variables moved


def test_fedpara_process_refuses_a_model_that_is_neither_kind_and_a_functional_decay():
  with pytest.raises(TypeError, match=r'model_fn must be .* got Sequential'):
    fedpara_tff.build_fedpara_process(ts.keras_model())
  # TFF 0.87's scheduled FedAvg fails on a FunctionalModel inside TFF: refused up front.
  with pytest.raises(ValueError, match=r'lr_decay=0.992 is not available with a FunctionalModel'):
    fedpara_tff.build_fedpara_process(_functional(), lr_decay=0.992)


def test_a_tff_encoded_inner_factory_reports_its_encoded_bytes():
  """TFF's EncodedSumFactory (8-bit uniform quantization), alone or behind TFF's zeroing
  wrapper: `bytes_uploaded` is its encoded structure, hand-counted per tensor as 28 bits packed
  in each 4-byte int32 plus the float32 min and max; `compression_aggregator()` at its default
  threshold quantizes none of this model's tensors (float32 bytes). An encoding we cannot
  measure (declared with inner_encodes=True) is named for what it is: bytes before encoding.
  The aggregator's own process on the model's trainable variables, three clients (how
  FedAvg's builders call it; `test_stock_fedavg_with_factor_aggregator_is_the_weighted_average`
  measures bytes inside a builder)."""
  def quantizing():
    return tff.aggregators.MeanFactory(
        tff.aggregators.EncodedSumFactory.quantize_above_threshold(8, threshold=0))

  def one_layer():   # TFF's encoders cost per tensor: five tensors, not ts.keras_model's ten
    return tf.keras.Sequential([tf.keras.Input((6,)), kl.FedParaDense(4, rank=1, name='only')])

  updates = [np.full(v.shape, 0.01 * (i + 1), np.float32)
             for i, v in enumerate(one_layer().trainable_variables)]

  def communication_of(**kwargs):
    factory = fedpara_tff.factor_aggregator(keras_model_fn=one_layer, **kwargs)
    return aggregate(factory, [updates] * 3, [1.0, 2.0, 3.0]).measurements['communication']

  sizes = [int(np.prod(u.shape)) for u in updates]
  assert sizes == [4, 6, 4, 6, 4]   # x1 (4, 1), y1 (6, 1), x2, y2, bias (4,)
  elements = sum(sizes)   # 24
  packed = sum(4 * -(-n * 8 // 28) + 8 for n in sizes)
  for inner in (quantizing(), tff.aggregators.zeroing_factory(1e6, quantizing())):
    comm = communication_of(inner=inner)
    assert comm['bytes_uploaded_per_client'] == packed and comm['bytes_uploaded'] == 3 * packed
  ours = communication_of(quantization_bits=8, quantization_threshold=0)
  assert ours['bytes_uploaded'] == 3 * packed
  assert communication_of(inner=tff.learning.compression_aggregator())['bytes_uploaded'] == (
      3 * elements * 4)
  with pytest.warns(UserWarning, match='reported as bytes_uploaded_before_encoding'):
    comm = communication_of(inner=tff.aggregators.MeanFactory(), inner_encodes=True)
  assert 'bytes_uploaded' not in comm
  assert comm['bytes_uploaded_before_encoding'] == 3 * elements * 4
  assert comm['bytes_uploaded_per_client_before_encoding'] == elements * 4
  plain = communication_of(
      inner=tff.aggregators.clipping_factory(1e6, tff.aggregators.MeanFactory()))
  assert plain['bytes_uploaded'] == 3 * elements * 4
  assert not fedpara_tff.aggregators.encodes(tff.aggregators.MeanFactory())


def test_build_fedpara_process_takes_tff_optimizer_objects_as_tffs_builders_do(clients):
  """Issue 36: `client_optimizer='sgd'` and a float were the only way in; TFF's builders take
  optimizer objects (`client_optimizer_fn`, `server_optimizer_fn`)."""
  process = fedpara_tff.build_fedpara_process(
      ts.model_fn, keras_model_fn=ts.keras_model,
      client_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=0.1),
      server_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=1.0))
  state = process.initialize()
  initial = trainable(process, state)
  output = process.next(state, clients)
  assert_weights_close(trainable(process, output.state),
                       weighted_average_of_local_training(initial, 0.1))
  # At server lr 0.5 the server moves half way: the object is the one used.
  half = fedpara_tff.build_fedpara_process(
      ts.model_fn, client_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=0.1),
      server_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=0.5))
  state = half.initialize()
  initial = trainable(half, state)
  expected = weighted_average_of_local_training(initial, 0.1)
  assert_weights_close(trainable(half, half.next(state, clients).state),
                       [(a + b) / 2 for a, b in zip(initial, expected)])


@pytest.mark.parametrize('options, message', [
    (dict(client_optimizer_fn=tff.learning.optimizers.build_sgdm(0.1), client_learning_rate=0.2),
     r'^give client_optimizer_fn or client_learning_rate, not both'),
    (dict(server_optimizer_fn=tff.learning.optimizers.build_sgdm(1.0), algorithm='fedadam'),
     r"^algorithm='fedadam' names its own server optimizer; give server_optimizer_fn with "
     r"algorithm='fedavg'"),
    (dict(client_optimizer_fn='sgd'), r'^client_optimizer_fn must be a tff.learning.optimizers'),
])
def test_optimizer_objects_are_refused_beside_what_they_replace(options, message):
  with pytest.raises((ValueError, TypeError), match=message):
    fedpara_tff.build_fedpara_process(ts.model_fn, **options)
