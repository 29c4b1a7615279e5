"""MultiHeadAttention with factorised projections (`keras_layers.attention`), on whichever Keras
is installed: the output is a numpy multi-head attention over the numpy-composed kernels, the
parameters are hand-counted, convert fits and exports it, adapters start as the model, train
only their factors and merge into plain `MultiHeadAttention`."""

import warnings

import numpy as np
import pytest

import keras_layers as kl
from keras_layers import adapters
from keras_layers import attention
from keras_layers import backend
from keras_layers import einsum_layout
from keras_layers.backend import keras
from tests.keras3.factor_values import kernel as numpy_matrix
from tests.keras3.factor_values import np64
from tests.keras3.factor_values import randomized_then_reloaded

RNG = np.random.default_rng(17)
HEADS, KEY_DIM, MODEL_DIM, STEPS = 2, 4, 12, 5
CLASSES = {'fedpara': 'FedParaMultiHeadAttention', 'pfedpara': 'PFedParaMultiHeadAttention',
           'lowrank': 'LowRankMultiHeadAttention'}
# Each projection's kernel from its (rows, columns) matrix, by hand: the input projections'
# kernel is (model_dim, heads, key_dim), the output's (heads, key_dim, model_dim).
TO_KERNEL = {'query': (MODEL_DIM, HEADS, KEY_DIM), 'key': (MODEL_DIM, HEADS, KEY_DIM),
             'value': (MODEL_DIM, HEADS, KEY_DIM),
             'attention_output': (HEADS, KEY_DIM, MODEL_DIM)}


def numpy_attention(x, kernels, biases):
  """Keras' multi-head attention of `x` `(batch, steps, model_dim)` over itself, in float64:
  `kernels` / `biases` map each projection's name to its kernel and bias."""
  q, k, v = (np.einsum('abc,cde->abde', x, kernels[n]) + biases[n]
             for n in ('query', 'key', 'value'))
  scores = np.einsum('aecd,abcd->acbe', k, q / np.sqrt(KEY_DIM))
  scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
  scores /= scores.sum(axis=-1, keepdims=True)
  heads = np.einsum('acbe,aecd->abcd', scores, v)
  return (np.einsum('abcd,cde->abe', heads, kernels['attention_output'])
          + biases['attention_output'])


def _tokens(n=3):
  return RNG.normal(size=(n, STEPS, MODEL_DIM)).astype(np.float32)


def _model():
  """Attention over the tokens, pooled, and a Dense head; random weights."""
  tokens = keras.Input((STEPS, MODEL_DIM))
  h = keras.layers.MultiHeadAttention(HEADS, KEY_DIM, name='mha')(tokens, tokens)
  h = keras.layers.GlobalAveragePooling1D()(h)
  model = keras.Model(tokens, keras.layers.Dense(3, name='head')(h))
  model.set_weights([RNG.normal(scale=0.3, size=w.shape).astype(np.float32)
                     for w in model.get_weights()])
  return model


def _kernels_and_biases(layer, scheme, base=None, scale=1.0):
  """Every projection's kernel and bias, by name: a plain one's as it is, a factorised one's
  the numpy composition `D` of its factors put into the kernel's axes by hand (an adapter's
  `W0 + scale * D`, `W0` the kernel of that projection in the attention layer `base`)."""
  kernels, biases = {}, {}
  factorized = layer.factorized_projections()
  for name, part in attention.projection_layers(layer):
    if part in factorized:
      delta = numpy_matrix(part.factorization, scheme).reshape(TO_KERNEL[name])
      w0 = np64(dict(attention.projection_layers(base))[name].kernel) if base else 0.0
      kernels[name] = w0 + scale * delta
    else:
      kernels[name] = np64(part.kernel)
    biases[name] = np64(part.bias)
  return kernels, biases


@pytest.mark.parametrize('scheme', sorted(CLASSES))
@pytest.mark.parametrize('projections', [None, ('query', 'value')])
def test_the_output_is_numpy_attention_over_the_numpy_kernels(scheme, projections):
  layer = getattr(kl, CLASSES[scheme])(HEADS, KEY_DIM, rank=2, projections=projections)
  x = _tokens()
  layer(x, x)
  factorized = [name for name, part in attention.projection_layers(layer)
                if part in layer.factorized_projections()]
  assert factorized == list(projections or TO_KERNEL)
  for _, part in attention.projection_layers(layer):   # non-zero biases, so that they count
    part.bias.assign(RNG.normal(size=part.bias.shape).astype(np.float32))
  got = np64(layer(x, x))
  kernels, biases = _kernels_and_biases(layer, scheme)
  np.testing.assert_allclose(got, numpy_attention(np64(x), kernels, biases), rtol=1e-5,
                             atol=1e-5)
  # Keras' own layer makes the same output shape and kernel shapes.
  plain = keras.layers.MultiHeadAttention(HEADS, KEY_DIM)
  assert tuple(plain(x, x).shape) == got.shape
  for (name, mine), (_, theirs) in zip(attention.projection_layers(layer),
                                       attention.projection_layers(plain)):
    assert kernels[name].shape == tuple(theirs.kernel.shape), name


def test_parameters_are_hand_counted():
  # Query, key, value: matrix 12 x 8; output: 8 x 12. FedPara rank 2: 2 * 2 * (12 + 8) = 80 per
  # projection; biases 2 * 4 (three times) and 12; a plain projection 12 * 8.
  x = _tokens()
  layer = kl.FedParaMultiHeadAttention(HEADS, KEY_DIM, rank=2, projections=('query', 'value'))
  layer(x, x)
  assert layer.count_params() == 2 * 80 + 2 * 96 + 3 * 8 + 12 == 388
  assert layer.original_param_count() == 4 * 96 + 3 * 8 + 12 == 420
  assert layer.ranks == [2, 2]
  row, = [r for r in kl.parameter_report(kl.convert(_model(), rank=2, exclude=['head']))
          if r.name == 'mha']
  assert (row.kind, row.ranks, row.original, row.factorized) == (
      'FedParaMultiHeadAttention', (2, 2, 2, 2), 420, 4 * 80 + 36)


def test_a_low_rank_fit_is_the_truncated_svd_of_each_projections_matrix():
  model = _model()
  twin = kl.convert(model, 'lowrank', rank=3, include=['mha'], init='fit')
  plain = dict(attention.projection_layers(model.get_layer('mha')))
  want = []
  for name, part in plain.items():
    equation = part.equation
    singular = np.linalg.svd(einsum_layout.to_matrix(np64(part.kernel), equation),
                             compute_uv=False)
    want.append(np.sqrt(np.sum(singular[3:] ** 2) / np.sum(singular ** 2)))   # Eckart-Young
  np.testing.assert_allclose(twin.get_layer('mha').fit_errors, want, rtol=1e-4)
  # Full rank (8, the matrices' smaller side): the same outputs.
  full = kl.convert(model, 'lowrank', rank=8, include=['mha'], init='fit')
  tokens = _tokens()
  np.testing.assert_allclose(np64(full(tokens)), np64(model(tokens)), rtol=1e-4, atol=1e-4)


def test_convert_copies_the_projections_it_leaves_plain():
  model = _model()
  twin = kl.convert(model, rank=2, projections=['key'])
  mine = dict(attention.projection_layers(twin.get_layer('mha')))
  for name, part in attention.projection_layers(model.get_layer('mha')):
    if name != 'key':
      np.testing.assert_array_equal(np64(mine[name].kernel), np64(part.kernel))
  assert type(mine['key']).__name__ == 'FedParaEinsumDense'


@pytest.mark.parametrize('scheme', sorted(CLASSES))
def test_adapters_start_as_the_model_train_only_their_factors_and_merge(scheme):
  model = _model()
  twin = kl.add_adapters(model, scheme, rank=2, alpha=3, projections=('query', 'value'),
                         trainable=['head'])
  tokens = _tokens(4)
  np.testing.assert_array_equal(np64(twin(tokens)), np64(model(tokens)))
  names = [adapters.variable_name(v) for v in twin.trainable_variables]
  terms = {'fedpara': ('x1', 'y1', 'x2', 'y2'), 'pfedpara': ('x1', 'y1', 'x2_local', 'y2_local'),
           'lowrank': ('x', 'y')}[scheme]
  assert sorted(names) == sorted([f'mha/{p}/{t}' for p in ('query', 'value') for t in terms]
                                 + ['head/kernel', 'head/bias'])
  frozen_before = [np64(v) for v in twin.non_trainable_variables]
  # Key and attention_output (kernel and bias each), and query's / value's base and bias.
  assert len(frozen_before) == 8
  twin.compile(optimizer=keras.optimizers.SGD(0.1), loss='mse')
  twin.fit(tokens, RNG.normal(size=(4, 3)).astype(np.float32), batch_size=4, epochs=1,
           verbose=0)
  for before, after in zip(frozen_before, twin.non_trainable_variables):
    np.testing.assert_array_equal(before, np64(after))
  for v in twin.trainable_variables:   # away from D = 0, so that the merge is tested
    v.assign(RNG.normal(scale=0.3, size=v.shape).astype(np.float32))
  layer = twin.get_layer('mha')
  kernels, biases = _kernels_and_biases(layer, scheme, base=model.get_layer('mha'), scale=1.5)
  np.testing.assert_allclose(
      np64(layer(tokens, tokens)), numpy_attention(np64(tokens), kernels, biases),
      rtol=1e-5, atol=1e-5)
  merged = kl.export(twin)
  assert type(merged.get_layer('mha')) is keras.layers.MultiHeadAttention
  for name, part in attention.projection_layers(merged.get_layer('mha')):
    np.testing.assert_allclose(np64(part.kernel), kernels[name], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np64(merged(tokens)), np64(twin(tokens)), rtol=1e-5, atol=1e-5)


def test_the_report_counts_attention_adapters_beside_the_layer_they_adapt():
  twin = kl.add_adapters(_model(), 'lowrank', rank=2, targets=['mha'],
                         projections=('query', 'value'))
  row, = [r for r in kl.parameter_report(twin) if r.name == 'mha']
  # What trains: two low-rank adapters of 2 * (12 + 8); the layer adapted: 420 parameters.
  assert (row.kind, row.original, row.factorized) == (
      'LowRankMultiHeadAttention adapter', 420, 2 * 2 * 20)


def test_a_saved_attention_adapter_model_and_its_adapter_file_load(tmp_path):
  model = _model()
  twin = kl.add_adapters(model, 'fedpara', rank=2, alpha=4, targets=['mha'],
                         projections=('query', 'value'))
  loaded = randomized_then_reloaded(twin, tmp_path / 'twin.keras', RNG)
  tokens = _tokens()
  np.testing.assert_allclose(np64(loaded(tokens)), np64(twin(tokens)), rtol=1e-6, atol=1e-6)
  layer = loaded.get_layer('mha')
  assert (layer.projections, layer.factor_options) == (
      ('query', 'value'), {'rank': 2, 'adapter': True, 'adapter_alpha': 4.0})
  assert len(loaded.trainable_variables) == len(twin.trainable_variables) == 8
  kl.save_adapters(twin, tmp_path / 'adapters.npz')
  fresh = kl.add_adapters(model, 'fedpara', rank=2, alpha=4, targets=['mha'],
                          projections=('query', 'value'))
  kl.load_adapters(fresh, tmp_path / 'adapters.npz')
  np.testing.assert_allclose(np64(fresh(tokens)), np64(twin(tokens)), rtol=1e-6, atol=1e-6)


def test_pfedpara_attention_adapters_keep_their_second_terms_local():
  twin = kl.add_adapters(_model(), 'pfedpara', rank=2, targets=['mha'],
                         projections=('query', 'value'))
  shared, local = kl.split_global_local(twin)
  assert [adapters.variable_name(v) for v in local] == [
      'mha/query/x2_local', 'mha/query/y2_local', 'mha/value/x2_local', 'mha/value/y2_local']
  assert [adapters.variable_name(v) for v in shared] == [
      'mha/query/x1', 'mha/query/y1', 'mha/value/x1', 'mha/value/y1']


def test_targets_pick_attention_by_type():
  assert adapters.select_targets(_model(), keras.layers.MultiHeadAttention) == ['mha']


def test_attention_inside_another_layer_stays_plain_with_a_warning():

  class Block(keras.layers.Layer):
    def __init__(self, **kwargs):
      super().__init__(**kwargs)
      self.attend = keras.layers.MultiHeadAttention(HEADS, KEY_DIM)

    def call(self, x):
      return self.attend(x, x)

  tokens = keras.Input((STEPS, MODEL_DIM))
  model = keras.Model(tokens, keras.layers.Dense(8, name='fc')(Block(name='block')(tokens)))
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    twin = kl.convert(model, rank=2, exclude=[])
  assert any("MultiHeadAttention layers inside ['block'] stay plain" in str(w.message)
             for w in caught)
  assert type(twin.get_layer('fc')).__name__ == 'FedParaDense'
  with warnings.catch_warnings(record=True) as caught:   # an excluded attention layer: silent
    warnings.simplefilter('always')
    kl.convert(_model(), rank=2, exclude=['mha'])
  assert not [w for w in caught if 'stay plain' in str(w.message)]


@pytest.mark.parametrize('call, match', [
    (lambda: kl.FedParaMultiHeadAttention(2, 4, rank=2, projections=('queries',)),
     r"projections must name distinct projections of MultiHeadAttention, some of \('query', "
     r"'key', 'gate', 'value', 'attention_output'\); got \('queries',\)"),
    (lambda: kl.FedParaMultiHeadAttention(2, 4, rank=2, projections=('key', 'key')),
     r"projections must name distinct projections"),
    (lambda: kl.FedParaMultiHeadAttention(2, 4, rank=0), r'rank must be a positive integer; '
                                                        r'got 0'),
    (lambda: kl.convert(_model(), rank=2, projections='valeu'), r"got \('valeu',\)"),
    (lambda: kl.convert(_model(), rank=50, include=['mha']),
     r'convert: rank 50 is above 8, the largest rank of any kernel it would factorise'),
])
def test_bad_attention_options_are_one_line(call, match):
  with pytest.raises(ValueError, match=match) as error:
    call()
  assert '\n' not in str(error.value)


def test_a_projection_the_layer_does_not_make_is_refused_in_one_line():
  with pytest.raises(ValueError, match=r"^att: projections names \['gate'\], which this "
                                       r"MultiHeadAttention does not make; it makes \['query', "
                                       r"'key', 'value', 'attention_output'\]\.$"):
    kl.LowRankMultiHeadAttention(2, 4, rank=2, projections=('gate',), name='att')


@pytest.mark.skipif(not backend.IS_KERAS_3, reason="use_gate is Keras 3's")
def test_keras3_gate_projection_is_factorised_and_merges():
  tokens = keras.Input((STEPS, MODEL_DIM))
  gated = keras.layers.MultiHeadAttention(HEADS, KEY_DIM, use_gate=True, name='mha')
  model = keras.Model(tokens, gated(tokens, tokens))
  twin = kl.add_adapters(model, 'fedpara', rank=2, projections=('gate', 'value'))
  assert [n for n, p in attention.projection_layers(twin.get_layer('mha'))
          if p in twin.get_layer('mha').factorized_projections()] == ['gate', 'value']
  for v in twin.trainable_variables:
    v.assign(RNG.normal(scale=0.3, size=v.shape).astype(np.float32))
  x = _tokens()
  np.testing.assert_allclose(np64(kl.export(twin)(x)), np64(twin(x)), rtol=1e-5, atol=1e-5)
