"""Weight-normalised LSTMs (plain and factorised) against numpy, conversion, export, runs."""

import math

import numpy as np
import pytest
import tensorflow as tf

import keras_layers as kl
from experiments import models
from experiments import run_config
from tests import numpy_reference as ref
from tests.test_composition import factor
from tests.test_composition import randomize
from tests.test_composition import reference_kernel

FACTORIZED = {'fedpara': kl.FedParaLSTM, 'pfedpara': kl.PFedParaLSTM, 'lowrank': kl.LowRankLSTM}


def _numpy_sequence(x, kernel, recurrent, bias, units):
  h = c = np.zeros((x.shape[0], units))
  outputs = []
  for t in range(x.shape[1]):
    h, c = ref.lstm_step(x[:, t], h, c, kernel, recurrent, bias)
    outputs.append(h)
  return np.stack(outputs, 1)


def test_initial_scale_is_the_glorot_column_length():
  assert kl.weight_norm.initial_scale((8, 1024)) == pytest.approx(math.sqrt(16 / 1032))
  # Glorot-uniform entries have variance 2 / (in + out); a column sums `in` of them.
  v = tf.keras.initializers.GlorotUniform(seed=0)((400, 100)).numpy()
  assert np.mean(np.linalg.norm(v, axis=0)) == pytest.approx(
      kl.weight_norm.initial_scale((400, 100)), rel=0.02)


def test_plain_weight_norm_lstm_matches_numpy():
  units, features, steps = 6, 5, 4
  layer = kl.WeightNormLSTM(units, return_sequences=True)
  x = np.random.default_rng(1).normal(size=(2, steps, features)).astype(np.float32)
  layer(x)
  randomize(layer.cell, scale=0.3)
  cell = layer.cell
  kernel = ref.weight_normalize(cell.kernel.numpy(), cell.kernel_g.numpy())
  recurrent = ref.weight_normalize(cell.recurrent_kernel.numpy(), cell.recurrent_g.numpy())
  np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), np.abs(cell.kernel_g.numpy()),
                             rtol=1e-6)
  expected = _numpy_sequence(x, kernel, recurrent, cell.bias.numpy(), units)
  np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-4, atol=1e-4)
  rnn = tf.keras.layers.RNN(cell, return_sequences=True)   # the bare cell agrees
  np.testing.assert_allclose(rnn(x).numpy(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('scheme', sorted(FACTORIZED))
def test_factorized_weight_norm_lstm_matches_numpy(scheme):
  units, features, steps = 6, 5, 4
  layer = FACTORIZED[scheme](units, rank=3, weight_norm=True, return_sequences=True)
  x = np.random.default_rng(2).normal(size=(2, steps, features)).astype(np.float32)
  layer(x)
  randomize(layer.cell, scale=0.3)
  cell = layer.cell
  kernel = ref.weight_normalize(reference_kernel(cell, scheme, None, prefix='kernel_'),
                                factor(cell, 'kernel_g'))
  recurrent = ref.weight_normalize(reference_kernel(cell, scheme, None, prefix='recurrent_'),
                                   factor(cell, 'recurrent_g'))
  np.testing.assert_allclose(layer.composed_kernel().numpy(), kernel, rtol=1e-5, atol=1e-5)
  expected = _numpy_sequence(x, kernel, recurrent, cell.bias.numpy(), units)
  np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_weight_norm_starts_at_the_glorot_column_length():
  layer = kl.FedParaLSTM(16, rank=4, weight_norm=True)
  layer(tf.zeros((1, 3, 8)))
  norms = np.linalg.norm(layer.composed_kernel().numpy(), axis=0)
  np.testing.assert_allclose(norms, math.sqrt(2 * 8 / (8 + 64)), rtol=1e-5)


def _model():
  return tf.keras.Sequential([
      tf.keras.Input((5, 4)),
      kl.WeightNormLSTM(12, return_sequences=True, name='lstm'),
      tf.keras.layers.Dense(3, name='logits')])


@pytest.mark.parametrize('parameterization', ['fedpara', 'pfedpara', 'lowrank'])
def test_convert_keeps_weight_norm_and_export_reproduces_outputs(parameterization):
  twin = kl.convert(_model(), parameterization, rank=2, exclude=['logits'])
  layer = twin.get_layer('lstm')
  assert isinstance(layer, FACTORIZED[parameterization]) and layer.cell.weight_norm
  # the twin's budget counts the plain weight-normalised LSTM, scales included
  assert layer.original_param_count() == 4 * 12 * (4 + 12) + 4 * 12 + 2 * 4 * 12
  randomize(layer.cell, scale=0.3)
  x = np.random.default_rng(0).normal(size=(2, 5, 4)).astype(np.float32)
  plain = kl.export(twin)
  assert type(plain.get_layer('lstm')) is tf.keras.layers.LSTM
  np.testing.assert_allclose(plain(x).numpy(), twin(x).numpy(), rtol=1e-5, atol=1e-5)
  clone = type(layer).from_config(layer.get_config())
  assert clone.get_config() == layer.get_config() and clone.cell.weight_norm


def test_weight_norm_lstm_config_round_trip_and_bad_value():
  layer = kl.WeightNormLSTM(7, return_sequences=True, unit_forget_bias=False)
  assert kl.WeightNormLSTM.from_config(layer.get_config()).get_config() == layer.get_config()
  with pytest.raises(ValueError, match=r"weight_norm must be True or False; got 'yes'"):
    kl.FedParaLSTM(4, rank=2, weight_norm='yes')


def test_zoo_weight_norm_for_every_parameterization():
  sizes = {}
  for parameterization in ('original', 'lowrank', 'fedpara'):
    model = models.build('lstm', (12,), 30, parameterization, rank=4, keep_plain=['logits'],
                         weight_norm=True)
    names = {v.name.split('/')[-1] for v in model.trainable_variables}
    assert {'kernel_g:0', 'recurrent_g:0'} <= names, parameterization
    sizes[parameterization] = model.count_params()
  plain = models.build('lstm', (12,), 30, 'original').count_params()
  assert sizes['original'] == plain + 2 * 2 * 4 * 256   # two LSTMs, two scales of 4H each
  with pytest.raises(ValueError, match=r"weight_norm applies to model=lstm; got model='mlp'"):
    models.build('mlp', (28, 28, 1), 10, 'original', weight_norm=True)


def test_weight_norm_flag_is_checked_and_old_runs_keep_their_identity():
  with pytest.raises(ValueError, match=r"weight_norm applies to the LSTM family \(model=lstm\); "
                                       r"got model='mlp'"):
    run_config.RunConfig(output_dir='unused', dataset='mnist5k', model='mlp', weight_norm=True)
  assert 'weight_norm' not in run_config.RunConfig('unused').identity()   # as before the flag existed
  assert run_config.RunConfig('unused', dataset='shakespeare', model='lstm',
                               weight_norm=True).identity()['weight_norm'] is True
