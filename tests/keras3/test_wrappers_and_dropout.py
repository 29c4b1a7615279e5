"""Factorised layers inside Keras' wrappers (`Bidirectional`, `TimeDistributed`), `convert` and
`export` through them, variable routing on nested layers, and dropout on the factorised LSTMs:
on whichever Keras is installed (Keras 2 in the main suite, Keras 3 in `make test-keras3`)."""

import numpy as np
import pytest

import keras_layers as kl
from keras_layers import backend
from keras_layers.backend import keras
from tests import numpy_reference as ref

RNG = np.random.default_rng(3)


def _np(value):
  return backend.to_numpy(value).astype(np.float64)


def _sequence_model():
  return keras.Sequential([
      keras.Input((5, 6)),
      keras.layers.Bidirectional(keras.layers.LSTM(8, return_sequences=True), name='bi'),
      keras.layers.TimeDistributed(keras.layers.Dense(12), name='td'),
      keras.layers.LSTM(8, name='last'),
      keras.layers.Dense(3, name='out')])


@pytest.mark.parametrize('parameterization', ['fedpara', 'pfedpara', 'lowrank'])
def test_convert_replaces_layers_inside_wrappers_and_export_keeps_the_function(parameterization):
  model = _sequence_model()
  converted = kl.convert(model, parameterization, rank=2, exclude=['out'])
  bi, td = converted.get_layer('bi'), converted.get_layer('td')
  assert isinstance(bi, keras.layers.Bidirectional)
  assert all(kl.is_factorized(part) for part in (bi.forward_layer, bi.backward_layer))
  assert bi.backward_layer.go_backwards and not bi.forward_layer.go_backwards
  assert isinstance(td, keras.layers.TimeDistributed) and kl.is_factorized(td.layer)
  x = RNG.normal(size=(2, 5, 6)).astype(np.float32)
  exported = kl.export(converted)
  assert type(exported.get_layer('bi').forward_layer) is keras.layers.LSTM
  assert type(exported.get_layer('td').layer) is keras.layers.Dense
  np.testing.assert_allclose(_np(exported(x)), _np(converted(x)), rtol=1e-5, atol=1e-5)


def test_the_parameter_report_counts_the_layers_inside_a_wrapper():
  converted = kl.convert(_sequence_model(), 'fedpara', rank=2, exclude=['out'])
  row = {r.name: r for r in kl.parameter_report(converted)}['bi']
  # Plain Bidirectional LSTM(8) on 6 features: two LSTMs of 4 * 8 * (6 + 8 + 1) parameters.
  assert row.kind == 'Bidirectional(FedParaLSTM)' and row.original == 2 * 4 * 8 * (6 + 8 + 1)
  # FedPara rank 2: per kernel (in, 4H) 2 * 2 * (in + 4H); bias 4H; two directions.
  one = 2 * 2 * (6 + 32) + 2 * 2 * (8 + 32) + 32
  assert row.factorized == 2 * one and row.ranks == (2, 2, 2, 2)


def test_a_bidirectional_factorised_lstm_equals_the_numpy_recurrence_both_ways():
  layer = keras.layers.Bidirectional(kl.FedParaLSTM(4, rank=2), merge_mode='concat')
  x = RNG.normal(size=(2, 3, 5)).astype(np.float32)
  out = _np(layer(x))

  def run(lstm, steps):
    kernel, recurrent, bias = [np.asarray(w, np.float64) for w in lstm.plain_weights()]
    h = c = np.zeros((2, 4))
    for t in steps:
      h, c = ref.lstm_step(x[:, t].astype(np.float64), h, c, kernel, recurrent, bias)
    return h

  want = np.concatenate([run(layer.forward_layer, range(3)),
                         run(layer.backward_layer, reversed(range(3)))], axis=-1)
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


def test_convert_refuses_a_replaceable_layer_it_cannot_reach_in_one_line():
  inner = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, name='d_in')], name='inner')
  model = keras.Sequential([keras.Input((6,)), inner, keras.layers.Dense(4, name='o')])
  with pytest.raises(ValueError, match=r"^convert: layer 'd_in' \(Dense\) inside 'inner'") as e:
    kl.convert(model, rank=2)
  assert '\n' not in str(e.value)
  converted = kl.convert(model, rank=2, exclude=['inner'])
  assert type(converted.get_layer('o')) is kl.FedParaDense


def test_split_global_local_finds_pfedpara_factors_inside_wrappers():
  converted = kl.convert(_sequence_model(), 'pfedpara', rank=2, exclude=['out'])
  global_vars, local_vars = kl.split_global_local(converted, local_layers=['out'])
  # Local: x2, y2 of each kernel: 2 kernels x 2 directions (bi), 1 (td), 2 (last); plus out's
  # kernel and bias (FedPer-style).
  assert len(local_vars) == 2 * (2 * 2 + 1 + 2) + 2
  assert len(global_vars) + len(local_vars) == len(converted.trainable_variables)
  mask = kl.local_variable_mask(converted)
  assert sum(mask) == 2 * (2 * 2 + 1 + 2)


def test_fit_trains_fedpara_and_pfedpara_models_global_and_local_factors():
  x = RNG.normal(size=(64, 5, 6)).astype(np.float32)
  y = (x[:, :, 0].sum(axis=1) > 0).astype(np.int32)
  for parameterization in ('fedpara', 'pfedpara'):
    model = kl.convert(_sequence_model(), parameterization, rank=2)
    model.compile(keras.optimizers.Adam(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    global_vars, local_vars = kl.split_global_local(model)
    before = [_np(v) for v in global_vars + local_vars]
    history = model.fit(x, y, epochs=15, batch_size=16, verbose=0).history['loss']
    assert history[-1] < 0.7 * history[0], (parameterization, history)
    after = [_np(v) for v in global_vars + local_vars]
    assert all(not np.array_equal(a, b) for a, b in zip(after, before))
    assert (len(local_vars) > 0) == (parameterization == 'pfedpara')


@pytest.mark.parametrize('dropout, recurrent_dropout', [(0.3, 0.0), (0.0, 0.4), (0.3, 0.4)])
@pytest.mark.skipif(not backend.IS_KERAS_3, reason='Keras 3 LSTMs take a dropout seed')
def test_dropout_draws_the_plain_lstms_masks_for_the_same_seed(dropout, recurrent_dropout):
  """Keras 3: with one seed, the factorised LSTM draws the same masks as `keras.layers.LSTM`
  (one per sequence; four per gate with recurrent dropout), so their training outputs match."""
  x = RNG.normal(size=(3, 6, 5)).astype(np.float32)
  options = dict(dropout=dropout, recurrent_dropout=recurrent_dropout, seed=11,
                 return_sequences=True)
  factorised = kl.FedParaLSTM(4, rank=2, **options)
  factorised(x)
  plain = keras.layers.LSTM(4, **options)
  plain(x)
  plain.set_weights(factorised.plain_weights())
  trained = _np(factorised(x, training=True))
  np.testing.assert_allclose(trained, _np(plain(x, training=True)), rtol=1e-5, atol=1e-6)
  assert not np.allclose(trained, _np(factorised(x)))   # the masks did something
  np.testing.assert_allclose(_np(factorised(x)), _np(plain(x)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('dropout, recurrent_dropout', [(0.3, 0.0), (0.0, 0.4), (0.3, 0.4)])
def test_dropout_equals_the_numpy_recurrence_with_the_layers_masks(
    dropout, recurrent_dropout, monkeypatch):
  """Any Keras: the masks the layer draws, recorded, multiply `x` and `h` inside the gates at
  every step (one mask per sequence, as Keras), and inference uses none."""
  drawn = []

  def recording(like, rate, generator):
    mask = real(like, rate, generator)
    drawn.append((like.shape[-1], rate, _np(mask)))
    return mask

  real = backend.dropout_mask
  monkeypatch.setattr(backend, 'dropout_mask', recording)
  x = RNG.normal(size=(3, 4, 5)).astype(np.float32)
  layer = kl.LowRankLSTM(6, rank=2, dropout=dropout, recurrent_dropout=recurrent_dropout,
                         seed=5)
  layer(x)
  drawn.clear()
  out = _np(layer(x, training=True))
  input_masks = [m for dim, rate, m in drawn if dim == 5 and rate == dropout]
  recurrent_masks = [m for dim, rate, m in drawn if dim == 6 and rate == recurrent_dropout]
  for masks, rate in ((input_masks, dropout), (recurrent_masks, recurrent_dropout)):
    for m in masks:   # Keras' dropout: each entry 0 or 1 / (1 - rate)
      assert np.all(np.isclose(m, 0) | np.isclose(m, 1 / (1 - rate), rtol=1e-5))
  kernel, recurrent, bias = [np.asarray(w, np.float64) for w in layer.plain_weights()]
  gates = 4 if backend.IS_KERAS_3 and recurrent_dropout else 1
  assert len(input_masks) == (gates if dropout else 0)
  assert len(recurrent_masks) == (gates if recurrent_dropout else 0)
  ones_x, ones_h = [np.ones((3, 5))] * gates, [np.ones((3, 6))] * gates
  input_masks, recurrent_masks = input_masks or ones_x, recurrent_masks or ones_h
  h = c = np.zeros((3, 6))
  for t in range(4):
    z = bias.copy()
    for g, (k, u) in enumerate(zip(np.split(kernel, 4, axis=1), np.split(recurrent, 4, axis=1))):
      zg = (x[:, t] * input_masks[g % gates]) @ k + (h * recurrent_masks[g % gates]) @ u
      z = z + np.concatenate([zg if j == g else np.zeros_like(zg) for j in range(4)], axis=1)
    i, f, g_, o = np.split(z, 4, axis=1)
    c = ref.sigmoid(f) * c + ref.sigmoid(i) * np.tanh(g_)
    h = ref.sigmoid(o) * np.tanh(c)
  np.testing.assert_allclose(out, h, rtol=1e-5, atol=1e-5)


def test_dropout_options_are_validated_saved_and_converted(tmp_path):
  with pytest.raises(ValueError, match=r'^dropout must be a number in \[0, 1\); got 1.5\.$'):
    kl.FedParaLSTM(4, rank=2, dropout=1.5)
  with pytest.raises(ValueError, match='recurrent_dropout must be a number'):
    kl.FedParaLSTM(4, rank=2, recurrent_dropout=-0.1)
  plain = keras.Sequential([keras.Input((3, 4)),
                            keras.layers.LSTM(8, dropout=0.2, recurrent_dropout=0.1, name='l')])
  converted = kl.convert(plain, 'fedpara', rank=2)
  cell = converted.get_layer('l').cell
  assert (cell.dropout, cell.recurrent_dropout) == (0.2, 0.1)
  exported = kl.export(converted).get_layer('l')
  assert (exported.dropout, exported.recurrent_dropout) == (0.2, 0.1)
  path = str(tmp_path / 'm.keras')
  converted.save(path)
  loaded = keras.models.load_model(path).get_layer('l').cell
  assert (loaded.dropout, loaded.recurrent_dropout) == (0.2, 0.1)


def test_a_cell_in_keras_rnn_refuses_dropout_in_training_in_one_line():
  rnn = keras.layers.RNN(kl.FedParaLSTMCell(4, rank=2, dropout=0.2))
  x = RNG.normal(size=(2, 3, 5)).astype(np.float32)
  rnn(x)   # inference: no masks
  with pytest.raises(ValueError, match=r'dropout in training runs in the LSTM layers'):
    rnn(x, training=True)
