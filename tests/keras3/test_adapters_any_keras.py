"""Adapters (`keras_layers.adapters`) on whichever Keras is installed: the kernel is the frozen
pretrained one plus `alpha / rank` times the numpy composition of the factors, the twin starts
as the model, training moves only the adapters, `export` merges, adapter files round-trip."""

import numpy as np
import pytest

import keras_layers as kl
from keras_layers import adapters
from keras_layers import conversion
from keras_layers.backend import keras
from tests.keras3.factor_values import kernel as numpy_kernel
from tests.keras3.factor_values import np64
from tests.keras3.factor_values import randomized_then_reloaded

RNG = np.random.default_rng(11)
SCHEMES = ('fedpara', 'pfedpara', 'lowrank')


def _pretrained():
  """A small functional model with every adaptable kind (Conv2D, LSTM over rows, Dense),
  its weights random (as trained ones, they are not the initialiser's)."""
  images = keras.Input((6, 6, 2))
  h = keras.layers.Conv2D(4, 3, padding='same', activation='relu', name='conv')(images)
  h = keras.layers.Reshape((6, 24))(h)
  h = keras.layers.LSTM(8, name='lstm')(h)
  h = keras.layers.Dense(10, activation='relu', name='fc1')(h)
  model = keras.Model(images, keras.layers.Dense(3, name='head')(h))
  model.set_weights([RNG.normal(scale=0.3, size=w.shape).astype(np.float32)
                     for w in model.get_weights()])
  return model


def _images(n=5):
  return RNG.normal(size=(n, 6, 6, 2)).astype(np.float32)


def _values(variables):
  return [np64(v) for v in variables]


@pytest.mark.parametrize('scheme', SCHEMES)
def test_the_twin_computes_what_the_model_did_and_only_its_adapters_train(scheme):
  model = _pretrained()
  twin = kl.add_adapters(model, scheme, rank=2, alpha=6, trainable=['head'])
  images = _images()
  np.testing.assert_array_equal(np64(twin(images)), np64(model(images)))
  names = [adapters.variable_name(v) for v in twin.trainable_variables]
  # Frozen: every kernel and bias of the adapted layers, and the layers left plain.
  assert not [n for n in names if 'base_kernel' in n or n.endswith('bias') and n != 'head/bias']
  assert names[-2:] == ['head/kernel', 'head/bias']
  frozen_before = _values(twin.non_trainable_variables)
  trained_before = _values(twin.trainable_variables)
  twin.compile(optimizer=keras.optimizers.SGD(0.1), loss='mse')
  twin.fit(images, RNG.normal(size=(5, 3)).astype(np.float32), batch_size=5, epochs=1, verbose=0)
  for before, after in zip(frozen_before, _values(twin.non_trainable_variables)):
    np.testing.assert_array_equal(before, after)
  moved = {name for name, before, after in zip(names, trained_before,
                                               _values(twin.trainable_variables))
           if not np.array_equal(before, after)}
  # One step from D = 0: only the zero factor (and the head) has a gradient, every other
  # factor multiplies it.
  zero = 'x1' if scheme != 'lowrank' else 'x'
  expected = {'head/kernel', 'head/bias', f'conv/{zero}', f'fc1/{zero}',
              f'lstm/cell/kernel_{zero}', f'lstm/cell/recurrent_{zero}'}
  assert {n.replace('lstm/lstm/', 'lstm/') for n in moved} == expected


@pytest.mark.parametrize('scheme', SCHEMES)
def test_the_kernel_is_the_base_plus_alpha_over_rank_times_the_numpy_delta(scheme):
  model = _pretrained()
  twin = kl.add_adapters(model, scheme, rank=3, alpha=1.5, targets=[keras.layers.Dense])
  fc1 = twin.get_layer('fc1')
  for v in fc1.trainable_weights:
    v.assign(RNG.normal(size=v.shape).astype(np.float32))
  want = np64(model.get_layer('fc1').kernel) + 0.5 * numpy_kernel(fc1.factorization, scheme)
  np.testing.assert_allclose(np64(fc1.composed_kernel()), want, rtol=1e-5, atol=1e-5)
  # The merged model computes the same, and holds plain layers only.
  images = _images()
  merged = kl.export(twin)
  assert not any(conversion.is_factorized(layer) for layer in merged.layers)
  np.testing.assert_allclose(np64(merged(images)), np64(twin(images)), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np64(merged.get_layer('fc1').kernel), want, rtol=1e-5, atol=1e-5)


def test_the_report_counts_the_adapters_beside_the_layers_they_adapt():
  model = _pretrained()
  twin = kl.add_adapters(model, 'fedpara', rank=2, targets=['fc1'])
  rows = {r.name: r for r in kl.parameter_report(twin)}
  # fc1: plain 8 x 10 kernel + 10 bias; FedPara delta 2 terms x rank 2 x (8 + 10).
  assert (rows['fc1'].kind, rows['fc1'].original, rows['fc1'].factorized) == (
      'FedParaDense adapter', 90, 72)
  assert rows['head'].original == rows['head'].factorized == 33


def test_adapter_files_round_trip_and_refuse_another_models(tmp_path):
  model = _pretrained()
  twin = kl.add_adapters(model, 'lowrank', rank=2, targets='fc.*')
  for v in twin.trainable_variables:
    v.assign(RNG.normal(size=v.shape).astype(np.float32))
  path = tmp_path / 'adapters.npz'
  kl.save_adapters(twin, path)
  with np.load(path) as stored:
    assert sorted(stored.files) == ['fc1/x', 'fc1/y']   # the frozen base is not in it
    # Hand count: x (10, 2), y (8, 2).
    assert sum(stored[k].size for k in stored.files) == 36
  fresh = kl.add_adapters(model, 'lowrank', rank=2, targets='fc.*')
  kl.load_adapters(fresh, path)
  images = _images()
  np.testing.assert_array_equal(np64(fresh(images)), np64(twin(images)))
  other = kl.add_adapters(model, 'lowrank', rank=3, targets='fc.*')
  with pytest.raises(ValueError, match=r'adapters.npz: fc1/x has shape \(10, 2\); this '
                                       r'model\'s is \(10, 3\)\.'):
    kl.load_adapters(other, path)
  with pytest.raises(ValueError, match=r'holds the adapters of another model: it lacks'):
    kl.load_adapters(kl.add_adapters(model, 'lowrank', rank=2), path)


def test_a_failed_save_keeps_the_previous_file_whole(tmp_path, monkeypatch):
  twin = kl.add_adapters(_pretrained(), 'lowrank', rank=2, targets='fc.*')
  path = tmp_path / 'adapters.npz'
  kl.save_adapters(twin, path)
  before = path.read_bytes()

  def savez_then_fail(f, **arrays):
    f.write(b'half an archive')
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(np, 'savez', savez_then_fail)
  with pytest.raises(OSError, match='No space left'):
    kl.save_adapters(twin, path)
  assert path.read_bytes() == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ['adapters.npz']


def test_targets_by_type_name_and_pattern():
  model = _pretrained()
  assert adapters.select_targets(model) == ['conv', 'lstm', 'fc1', 'head']
  assert adapters.select_targets(model, [keras.layers.Dense]) == ['fc1', 'head']
  assert adapters.select_targets(model, ['lstm', 'c.*']) == ['conv', 'lstm']
  assert adapters.select_targets(model, keras.layers.Conv2D) == ['conv']


@pytest.mark.parametrize('call, match', [
    (lambda m: kl.add_adapters(m, rank=2, targets=['nope']),
     r"targets item 'nope' picks no Dense/EinsumDense/Conv1D/Conv2D/LSTM/MultiHeadAttention "
     r"layer; the model has \['conv', "),
    (lambda m: kl.add_adapters(m, rank=2, targets=[3]),
     r'targets takes layer types, layer names or name patterns; got int 3'),
    (lambda m: kl.add_adapters(m, targets=['fc1']), r'give rank \(e.g. rank=4\)'),
    (lambda m: kl.add_adapters(m, rank=2, targets=['fc1'], trainable=['fc1']),
     r"layers \['fc1'\] are both targets and trainable"),
    (lambda m: kl.add_adapters(m, rank=2, trainable=['hed']),
     r"trainable names layers not in the model: \['hed'\]"),
    (lambda m: kl.add_adapters(m, rank=2, alpha=-1.0), r'adapter_alpha must be a finite number '
                                                       r'> 0; got -1.0'),
    (lambda m: kl.add_adapters(m, rank=2, factor_lr_scale='safe'),
     r"an adapter takes no factor_lr_scale \(got 'safe'\)"),
    (lambda m: kl.FedParaDense(4, rank=2, adapter_alpha=2.0),
     r'adapter_alpha=2.0 is for adapters; pass adapter=True'),
    (lambda m: kl.convert(m, rank=2, init='fit', adapter=True), r"init='fit' fits factors"),
])
def test_bad_adapter_options_are_one_line(call, match):
  with pytest.raises(ValueError, match=match) as error:
    call(_pretrained())
  assert '\n' not in str(error.value)


def test_a_saved_adapter_model_loads_with_its_frozen_base(tmp_path):
  model = _pretrained()
  twin = kl.add_adapters(model, 'fedpara', rank=2, alpha=4, targets=['fc1', 'conv'])
  loaded = randomized_then_reloaded(twin, tmp_path / 'twin.keras', RNG)
  images = _images()
  np.testing.assert_allclose(np64(loaded(images)), np64(twin(images)), rtol=1e-6, atol=1e-6)
  assert len(loaded.trainable_variables) == len(twin.trainable_variables)
  assert loaded.get_layer('fc1').adapter_alpha == 4.0
