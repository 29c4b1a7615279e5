"""convert / export, the parameter report, global-local routing and the PyTorch layout."""

import numpy as np
import pytest
import tensorflow as tf

import keras_layers as kl
from experiments import models
from tests import numpy_reference as ref


@pytest.mark.parametrize('classes, gamma, original, expected_millions', [
    (10, 0.1, 15_253_578, 1.547), (100, 0.4, 15_299_748, 4.532)])
def test_vgg16_gn_counts_reproduce_spec(classes, gamma, original, expected_millions):
  plain = models.vgg16_gn(num_classes=classes)
  assert plain.count_params() == original
  twin = kl.convert(plain, gamma=gamma, exclude=['fc1', 'fc2', 'logits'], copy_weights=False)
  assert sum(isinstance(l, kl.FedParaConv2D) for l in twin.layers) == 13
  assert twin.count_params() / 1e6 == pytest.approx(expected_millions, abs=0.0015)
  assert kl.total_params(twin) == (original, twin.count_params())


def lstm_model():
  inputs = tf.keras.Input((7,), dtype=tf.int32)
  h = tf.keras.layers.Embedding(30, 8, name='embed')(inputs)
  h = tf.keras.layers.LSTM(24, return_sequences=True, name='lstm1')(h)
  h = tf.keras.layers.LSTM(24, name='lstm2')(h)
  return tf.keras.Model(inputs, tf.keras.layers.Dense(30, name='logits')(h))


def conv_model():
  return tf.keras.Sequential([
      tf.keras.Input((12, 12, 3)),
      tf.keras.layers.Conv2D(16, 3, padding='same', activation='relu', name='c1'),
      tf.keras.layers.Conv2D(24, 3, strides=2, name='c2'),
      tf.keras.layers.Flatten(),
      tf.keras.layers.Dense(32, activation='relu', name='d1'),
      tf.keras.layers.Dense(5, name='out'),
  ])


def conv1d_model():
  return tf.keras.Sequential([
      tf.keras.Input((20, 6)),
      tf.keras.layers.Conv1D(16, 5, padding='causal', name='c1'),
      tf.keras.layers.GlobalAveragePooling1D(),
      tf.keras.layers.Dense(4, name='out'),
  ])


def inputs_for(model):
  if model.inputs[0].dtype == tf.int32:
    return np.random.default_rng(0).integers(0, 30, (4, 7)).astype(np.int32)
  shape = (4,) + tuple(model.inputs[0].shape[1:])
  return np.random.default_rng(0).normal(size=shape).astype(np.float32)


def perturb(model, seed=5):
  """Moves every factor away from its init so export is tested on trained-like values."""
  rng = np.random.default_rng(seed)
  for v in model.trainable_variables:
    v.assign(v.numpy() + rng.normal(0, 0.05, v.shape).astype(np.float32))


@pytest.mark.parametrize('build_model', [conv_model, lstm_model, conv1d_model])
@pytest.mark.parametrize('parameterization', ['fedpara', 'pfedpara', 'lowrank'])
def test_export_gives_plain_layers_with_matching_outputs(build_model, parameterization):
  twin = kl.convert(build_model(), parameterization, gamma=0.5, nonlinearity='tanh')
  perturb(twin)
  plain = kl.export(twin)
  assert not any(kl.is_factorized(l) for l in plain.layers)
  assert {type(l).__module__.split('.')[0] for l in plain.layers} == {'keras'}
  x = inputs_for(twin)
  np.testing.assert_allclose(plain(x).numpy(), twin(x).numpy(), rtol=1e-5, atol=1e-5)


def test_convert_keeps_names_args_and_untouched_weights():
  plain = conv_model()
  twin = kl.convert(plain, 'pfedpara', rank=2, include=['c1', 'c2', 'd1'], exclude=['d1'])
  assert [l.name for l in twin.layers] == [l.name for l in plain.layers]
  assert [type(l).__name__ for l in twin.layers] == [
      'PFedParaConv2D', 'PFedParaConv2D', 'Flatten', 'Dense', 'Dense']
  c2 = twin.get_layer('c2')
  assert c2.strides == (2, 2) and c2.ranks == [2] and c2.activation is tf.keras.activations.linear
  assert twin.get_layer('c1').activation is tf.keras.activations.relu
  for name in ('d1', 'out'):
    for a, b in zip(twin.get_layer(name).get_weights(), plain.get_layer(name).get_weights()):
      np.testing.assert_array_equal(a, b)


def test_convert_skips_too_small_layers_and_warns():
  plain = tf.keras.Sequential([tf.keras.Input((16,)), tf.keras.layers.Dense(32, name='a'),
                               tf.keras.layers.Dense(1, name='b')])
  with pytest.warns(UserWarning, match=r"layer 'b' .* too small to factorise"):
    twin = kl.convert(plain, gamma=0.5)
  assert isinstance(twin.get_layer('a'), kl.FedParaDense)
  assert type(twin.get_layer('b')) is tf.keras.layers.Dense


def test_convert_warns_when_nothing_is_replaceable():
  plain = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.ReLU(name='r')])
  with pytest.warns(UserWarning, match=r'no replaceable Dense/EinsumDense/Conv1D/Conv2D/LSTM/'
                                       r'MultiHeadAttention layer'):
    kl.convert(plain)


@pytest.mark.parametrize('option', ['include', 'exclude'])
def test_convert_rejects_unknown_layer_names(option):
  with pytest.raises(ValueError, match=rf"{option} names layers not in the model: \['nope'\]"):
    kl.convert(conv_model(), **{option: ['c1', 'nope']})


def test_convert_rejects_bad_parameterization_and_unsupported_lstm_options():
  with pytest.raises(ValueError, match=r"parameterization must be one of .* got 'fedprox'"):
    kl.convert(conv_model(), 'fedprox')
  plain = tf.keras.Sequential([tf.keras.Input((5, 3)),
                               tf.keras.layers.LSTM(20, kernel_constraint='non_neg',
                                                    name='l')])
  with pytest.raises(ValueError, match=r"l: kernel_constraint=.* is not supported .*allowed: None"):
    kl.convert(plain)


def test_parameter_report_rows_and_totals():
  twin = kl.convert(conv_model(), gamma=0.0, exclude=['out'])
  rows = {r.name: r for r in kl.parameter_report(twin)}
  r = kl.r_min((3, 3, 3, 16))
  assert rows['c1'].ranks == (r,)
  assert rows['c1'].original == 3 * 3 * 3 * 16 + 16
  assert rows['c1'].factorized == kl.fedpara_param_count((3, 3, 3, 16), r) + 16
  assert rows['out'].original == rows['out'].factorized == 32 * 5 + 5
  text = kl.format_parameter_report(twin)
  assert text.splitlines()[-1].split()[:3] == [
      'total', f'{sum(x.original for x in rows.values()):,}',
      f'{sum(x.factorized for x in rows.values()):,}']


def test_split_global_local_routes_pfedpara_factors_and_fedper_layers():
  twin = kl.convert(conv_model(), 'pfedpara', rank=2, exclude=['out'])
  global_vars, local_vars = kl.split_global_local(twin)
  assert {v.name.split('/')[-1] for v in local_vars} == {
      'x2_local:0', 'y2_local:0', 't2_local:0'}
  assert len(local_vars) == 3 + 3 + 2
  assert len(global_vars) + len(local_vars) == len(twin.trainable_variables)
  mask = kl.local_variable_mask(twin, local_layers=['out'])
  assert sum(mask) == len(local_vars) + 2
  with pytest.raises(ValueError, match=r"local_layers names layers not in the model: \['x'\]"):
    kl.local_variable_mask(twin, local_layers=['x'])
  lstm_twin = kl.convert(lstm_model(), 'pfedpara', gamma=0.5, exclude=['logits'])
  assert len(kl.split_global_local(lstm_twin)[1]) == 2 * 4  # two LSTMs, two kernels each


@pytest.mark.parametrize('scheme_layer, terms', [
    (lambda: kl.FedParaConv2D(6, 3, rank=2), 2), (lambda: kl.LowRankConv2D(6, 3, rank=3), 1),
    (lambda: kl.PFedParaDense(6, rank=2), 2)])
def test_factors_in_pytorch_layout_load_to_the_same_kernel(scheme_layer, terms):
  layer = scheme_layer()
  conv = isinstance(layer, kl.FedParaConv2D) or isinstance(layer, kl.LowRankConv2D)
  layer(tf.zeros((1, 5, 5, 4)) if conv else tf.zeros((1, 4)))
  rank = layer.ranks[0]
  rng = np.random.default_rng(0)
  torch_terms = []
  for _ in range(terms):
    term = {'O': rng.normal(size=(rank, 6)), 'I': rng.normal(size=(rank, 4))}
    if conv:
      term['T'] = rng.normal(size=(rank, rank, 3, 3))
    torch_terms.append(term)
  kl.load_torch_factors(layer, torch_terms, bias=np.arange(6.0))
  # The authors' composition, in PyTorch layout (out, in, kh, kw).
  if conv:
    w = [np.einsum('xyzw,xo,yi->oizw', t['T'], t['O'], t['I']) for t in torch_terms]
  else:
    w = [t['O'].T @ t['I'] for t in torch_terms]
  scheme = layer.factorizations[0].scheme
  expected = kl.torch_kernel_to_keras(ref.combine(scheme, w))
  np.testing.assert_allclose(layer.composed_kernel().numpy(), expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(layer.bias.numpy(), np.arange(6.0))
  with pytest.raises(ValueError, match=r"expected \(\d+, 6\)"):
    kl.load_torch_factors(layer, [{'O': np.zeros((rank, 7)), 'I': np.zeros((rank, 4)),
                                   'T': np.zeros((rank, rank, 3, 3))}] * terms)


@pytest.mark.parametrize('return_sequences, go_backwards', [(False, False), (True, True)])
def test_lstm_masking_and_direction_match_keras_lstm_after_export(return_sequences, go_backwards):
  inputs = tf.keras.Input((6,), dtype=tf.int32)
  h = tf.keras.layers.Embedding(20, 8, mask_zero=True, name='embed')(inputs)
  h = tf.keras.layers.LSTM(12, return_sequences=return_sequences, go_backwards=go_backwards,
                           name='lstm')(h)
  twin = kl.convert(tf.keras.Model(inputs, h), 'fedpara', rank=3)
  perturb(twin)
  x = np.array([[3, 4, 5, 0, 0, 0], [7, 1, 2, 9, 11, 12]], np.int32)
  np.testing.assert_allclose(kl.export(twin)(x).numpy(), twin(x).numpy(), rtol=1e-5, atol=1e-5)


def test_rnn_over_a_factorised_cell_is_factorised_everywhere():
  """`RNN(FedParaLSTMCell)` is one factorised layer for `is_factorized`, the parameter report,
  `export` (a plain LSTM, same outputs) and the TFF travel mask; it used to be exported with its
  FedPara cell and reported as a plain layer."""
  import fedpara_tff  # pylint: disable=g-import-not-at-top
  wrapped = tf.keras.Sequential([tf.keras.Input((5, 3)),
                                 tf.keras.layers.RNN(kl.FedParaLSTMCell(8, rank=2),
                                                     return_sequences=True, name='rnn'),
                                 tf.keras.layers.Dense(2)])
  layer = kl.FedParaLSTM(8, rank=2, return_sequences=True)
  reference = tf.keras.Sequential([tf.keras.Input((5, 3)), layer, tf.keras.layers.Dense(2)])
  assert kl.is_factorized(wrapped.layers[0])
  rows = kl.parameter_report(wrapped)
  expected = kl.parameter_report(reference)
  assert (rows[0].ranks, rows[0].original, rows[0].factorized) == (
      expected[0].ranks, expected[0].original, expected[0].factorized)
  assert rows[0].original == 4 * 8 * (3 + 8 + 1)   # the plain LSTM it replaces
  x = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
  plain = kl.export(wrapped)
  assert type(plain.layers[0]) is tf.keras.layers.LSTM and plain.layers[0].return_sequences
  assert not any(kl.is_factorized(l) for l in plain.submodules)
  np.testing.assert_allclose(plain(x).numpy(), wrapped(x).numpy(), atol=1e-5)
  assert fedpara_tff.travel_mask(wrapped) == [True] * len(wrapped.trainable_variables)
