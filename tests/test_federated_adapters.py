"""Adapters on the shared round: the frozen base stays on the clients, only the adapters move.

The pretrained model is a plain two-layer net with seeded weights; every expected number comes
from numpy: its forward pass with `W0 + (alpha / rank) * (Y1 X1^T) * (Y2 X2^T)` and the
hand-counted adapter parameters.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import numpy as np  # pylint: disable=g-import-not-at-top
import pytest
import tensorflow as tf

import fedpara_tff
from fedpara_tff import models
from fedpara_tff import tf_backend
import keras_layers as kl
from tests import tff_support as ts

RANK, ALPHA = 2, 4.0
# What travels, by hand: hidden's adapter x1, y1, x2, y2 (16x2, 98x2), then logits (trainable
# as it is) kernel 16x10 and bias 10. The hidden layer's kernel 98x16 and bias 16 stay home.
ADAPTER_ELEMENTS = 2 * (16 * RANK + 98 * RANK) + 16 * 10 + 10   # 626


@pytest.fixture(scope='module')
def pretrained():
  """A plain model with seeded 'pretrained' weights, built eagerly."""
  model = tf.keras.Sequential([
      tf.keras.Input((ts.FEATURES,)),
      tf.keras.layers.Dense(16, activation='relu', name='hidden'),
      tf.keras.layers.Dense(10, name='logits')])
  rng = np.random.default_rng(3)
  model.set_weights([rng.normal(0, 0.05, w.shape).astype(np.float32)
                     for w in model.get_weights()])
  return model


@pytest.fixture(scope='module')
def data():
  arrays = ts.client_arrays([40, 40, 40])
  return [ts.to_dataset(x, y) for x, y in arrays], arrays


def _adapter_fn(pretrained, parameterization='fedpara'):
  return lambda: kl.add_adapters(pretrained, parameterization, rank=RANK, alpha=ALPHA,
                                 trainable=['logits'])


def _numpy_accuracy(w0, b0, kernel_1, bias_1, x, y):
  """Accuracy of relu(x W0 + b0) W1 + b1 (numpy)."""
  hidden = np.maximum(x @ w0 + b0, 0.0)
  return float(np.mean(np.argmax(hidden @ kernel_1 + bias_1, axis=1) == y))


def _delta(x1, y1, x2, y2):
  """FedPara's `D = (Y1 X1^T) * (Y2 X2^T)` in the kernel's (input, output) layout."""
  return (y1 @ x1.T) * (y2 @ x2.T)


@pytest.mark.parametrize('backend', ['tff', 'tf'])
def test_only_adapters_travel_and_the_base_stays_pretrained(pretrained, data, backend):
  datasets, arrays = data
  # Read before the round traces its graphs: Keras 2 then swaps Sequential's base class to its
  # graph-mode one, whose get_weights fails on a model built eagerly.
  w0, b0, kernel_1, bias_1 = [v.numpy() for v in pretrained.variables]
  driver = fedpara_tff.build_fedavg_driver(
      _adapter_fn(pretrained), ts.ELEMENT_SPEC, client_learning_rate=0.1,
      client_executor=None if backend == 'tff' else tf_backend.on_devices())
  state = driver.initialize()
  x1, y1, x2, y2, start_kernel, start_bias = state['global_weights']
  np.testing.assert_array_equal(x1, np.zeros((16, RANK)))   # D = 0: the pretrained model
  np.testing.assert_array_equal(start_kernel, kernel_1)
  np.testing.assert_array_equal(start_bias, bias_1)
  before = driver.evaluate(state, ['a', 'b'], datasets[:2])
  for (x, y), result in zip(arrays, before):
    assert result['accuracy'] == pytest.approx(_numpy_accuracy(w0, b0, kernel_1, bias_1, x, y))

  state, metrics = driver.next(state, ['a', 'b'], datasets[:2])
  comm = metrics['aggregator']['communication']
  assert comm['elements_uploaded_per_client'] == ADAPTER_ELEMENTS
  assert comm['bytes_uploaded'] == 2 * ADAPTER_ELEMENTS * 4
  assert metrics['train']['bytes_downloaded'] == 2 * ADAPTER_ELEMENTS * 4

  x1, y1, x2, y2, kernel_1, bias_1 = state['global_weights']
  assert np.abs(x1).max() > 0   # the zero factor moved
  merged = w0 + ALPHA / RANK * _delta(x1, y1, x2, y2)
  after = driver.evaluate(state, ['c'], datasets[2:])
  (x, y), = arrays[2:]
  assert after[0]['accuracy'] == pytest.approx(
      _numpy_accuracy(merged, b0, kernel_1, bias_1, x, y))
  np.testing.assert_array_equal(pretrained.variables[0].numpy(), w0)   # the source is untouched


# The attention model: the 98 features as 7 tokens of 14, one MultiHeadAttention (2 heads of 4)
# with adapters on its query and value, pooled, and the logits trainable as they are. What
# travels, by hand: per adapted projection x1, y1, x2, y2 of its matrix 14 x 8 (rank 2), then
# logits' kernel 14x10 and bias 10. Query's and value's bases and biases, key and
# attention_output stay home.
ATTENTION_ELEMENTS = 2 * 2 * (8 * RANK + 14 * RANK) + 14 * 10 + 10   # 326


@pytest.fixture(scope='module')
def pretrained_attention():
  tokens = tf.keras.Input((ts.FEATURES,))
  h = tf.keras.layers.Reshape((7, 14))(tokens)
  h = tf.keras.layers.MultiHeadAttention(2, 4, name='mha')(h, h)
  h = tf.keras.layers.GlobalAveragePooling1D()(h)
  model = tf.keras.Model(tokens, tf.keras.layers.Dense(10, name='logits')(h))
  rng = np.random.default_rng(4)
  model.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32)
                     for w in model.get_weights()])
  return model


@pytest.mark.parametrize('backend', ['tff', 'tf'])
def test_attention_adapters_travel_alone_and_merge_as_numpy_says(pretrained_attention, data,
                                                                 backend):
  datasets, arrays = data
  plain = [v.numpy() for v in pretrained_attention.variables]   # read before any graph traces
  adapter_fn = lambda: kl.add_adapters(pretrained_attention, 'fedpara', rank=RANK, alpha=ALPHA,
                                       projections=('query', 'value'), trainable=['logits'])
  driver = fedpara_tff.build_fedavg_driver(
      adapter_fn, ts.ELEMENT_SPEC, client_learning_rate=0.1,
      client_executor=None if backend == 'tff' else tf_backend.on_devices())
  state = driver.initialize()
  state, metrics = driver.next(state, ['a', 'b'], datasets[:2])
  comm = metrics['aggregator']['communication']
  assert comm['elements_uploaded_per_client'] == ATTENTION_ELEMENTS
  assert comm['bytes_uploaded'] == 2 * ATTENTION_ELEMENTS * 4
  # The merge: a plain Keras MultiHeadAttention whose query and value kernels are
  # W0 + (alpha / rank) * D, D composed by numpy from the round's factors, gives the driver's
  # accuracy.
  q_x1, q_y1, q_x2, q_y2, v_x1, v_y1, v_x2, v_y2, kernel, bias = state['global_weights']
  assert np.abs(q_x1).max() > 0 and np.abs(v_x1).max() > 0   # the zero factors moved
  merged = tf.keras.models.clone_model(pretrained_attention)
  values = list(plain)   # query kernel, bias, key kernel, bias, value kernel, bias, output ...
  values[0] = plain[0] + ALPHA / RANK * _delta(q_x1, q_y1, q_x2, q_y2).reshape(14, 2, 4)
  values[4] = plain[4] + ALPHA / RANK * _delta(v_x1, v_y1, v_x2, v_y2).reshape(14, 2, 4)
  values[-2:] = [kernel, bias]
  merged.set_weights(values)
  (x, y), = arrays[2:]
  # The round's values in an eager twin give the merged model's logits, and the driver its
  # accuracy.
  twin = adapter_fn()
  for variable, value in zip(twin.trainable_variables, state['global_weights']):
    variable.assign(value)
  logits = merged.predict(x, verbose=0)
  np.testing.assert_allclose(twin.predict(x, verbose=0), logits, rtol=1e-4, atol=1e-5)
  assert np.abs(logits - pretrained_attention.predict(x, verbose=0)).max() > 1e-3
  after = driver.evaluate(state, ['c'], datasets[2:])
  assert after[0]['accuracy'] == pytest.approx(np.mean(np.argmax(logits, axis=1) == y))


def test_pfedpara_adapters_keep_their_second_term_on_the_clients(pretrained):
  driver = fedpara_tff.build_pfedpara_driver(_adapter_fn(pretrained, 'pfedpara'),
                                             ts.ELEMENT_SPEC,
                                             client_executor=tf_backend.on_devices())
  assert [tuple(t.shape) for t in driver.aggregator_value_type] == [
      (16, RANK), (98, RANK), (16, 10), (10,)]
  assert [tuple(t.shape) for t in driver.local_type] == [(16, RANK), (98, RANK)]


def test_adapters_build_the_architecture_inside_a_graph(pretrained):
  with tf.Graph().as_default():
    twin = kl.add_adapters(pretrained, 'fedpara', rank=RANK, trainable=['logits'])
    assert [v.name.split(':')[0] for v in twin.non_trainable_variables] == [
        'hidden/base_kernel', 'hidden/bias']
    with pytest.raises(ValueError, match=r"^convert: init='fit' reads the trained kernels' "
                                         r"values, which a traced graph does not hold"):
      kl.convert(pretrained, 'lowrank', rank=2, init='fit')


def test_frozen_layers_pass_and_batchnorm_statistics_are_refused():
  frozen_norm = tf.keras.layers.BatchNormalization(name='bn')
  model = tf.keras.Sequential([tf.keras.Input((4,)), frozen_norm, tf.keras.layers.Dense(3)])
  frozen_norm.trainable = False
  assert len(models.frozen_variables(model)) == 4   # gamma, beta, mean, variance
  frozen_norm.trainable = True
  with pytest.raises(ValueError, match=r"^the model has 2 non-trainable variable\(s\) of "
                                       r"trainable layers \(first 'bn/moving_mean"):
    models.frozen_variables(model)


def test_tff_builders_refuse_adapters_and_name_the_round_that_takes_them(pretrained):
  adapter_fn = _adapter_fn(pretrained)
  with pytest.raises(ValueError, match=r'non-trainable variable\(s\), which TFF 0.87\'s builders '
                                       r'never aggregate and broadcast every round.*'
                                       r'build_fedavg_driver'):
    fedpara_tff.build_fedpara_process(
        fedpara_tff.keras_model_fn_to_tff(adapter_fn, ts.ELEMENT_SPEC),
        keras_model_fn=adapter_fn)
