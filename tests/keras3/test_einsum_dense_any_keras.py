"""EinsumDense twins (`keras_layers.einsum_dense`) and adapters on `EinsumDense` layers, on
whichever Keras is installed: the kernel is the numpy composition of the factors' matrix put
back into the kernel's axes by hand, the shapes are Keras' own `EinsumDense`'s, convert fits and
exports them, adapters start as the model and merge."""

import numpy as np
import pytest

import keras_layers as kl
from keras_layers import adapters
from keras_layers import einsum_layout
from keras_layers.backend import keras
from tests.keras3.factor_values import kernel as numpy_matrix
from tests.keras3.factor_values import np64
from tests.keras3.factor_values import randomized_then_reloaded

RNG = np.random.default_rng(5)
CLASSES = {'fedpara': 'FedParaEinsumDense', 'pfedpara': 'PFedParaEinsumDense',
           'lowrank': 'LowRankEinsumDense'}

# (equation, output_shape, bias_axes, input shape without batch, the kernel from its matrix by
# hand: rows are the kernel's input axes, columns the others, each in the kernel's order).
CASES = [
    # MultiHeadAttention's query projection: kernel (c=16, d=4, e=8), matrix (16, 32).
    ('abc,cde->abde', (None, 4, 8), 'de', (5, 16), lambda m: m.reshape(16, 4, 8)),
    # Its output projection: kernel (c=4, d=8, e=16), matrix (32, 16).
    ('abcd,cde->abe', (None, 16), 'e', (5, 4, 8), lambda m: m.reshape(4, 8, 16)),
    # A kernel stored output-axis first: kernel (d=6, c=12), matrix (c, d) = its transpose.
    ('abc,dc->abd', (None, 6), None, (3, 12), lambda m: m.T),
    # Left ellipsis: a Dense over the last axis.
    ('...b,bc->...c', 7, 'c', (2, 3, 10), lambda m: m),
]


def _layer(scheme, case, **options):
  equation, output_shape, bias_axes, _, _ = case
  return getattr(kl, CLASSES[scheme])(equation, output_shape, bias_axes=bias_axes, **options)


@pytest.mark.parametrize('scheme', sorted(CLASSES))
@pytest.mark.parametrize('case', range(len(CASES)))
def test_the_output_is_the_einsum_of_the_numpy_kernel(scheme, case):
  equation, _, _, input_shape, to_kernel = CASES[case]
  layer = _layer(scheme, CASES[case], rank=2, activation='relu')
  x = RNG.normal(size=(2,) + input_shape).astype(np.float32)
  got = np64(layer(x))
  kernel = to_kernel(numpy_matrix(layer.factorization, scheme))
  want = np.einsum(equation, x.astype(np.float64), kernel)
  if layer.bias is not None:
    want = want + np64(layer.bias)
  np.testing.assert_allclose(got, np.maximum(want, 0.0), rtol=1e-5, atol=1e-5)
  # Keras' own EinsumDense makes the same kernel, bias and output shapes.
  plain = keras.layers.EinsumDense(equation, CASES[case][1], bias_axes=CASES[case][2])
  plain_out = plain(x)
  assert tuple(layer.composed_kernel().shape) == tuple(plain.kernel.shape) == kernel.shape
  assert (layer.bias is None) == (not plain.bias_axes)
  if layer.bias is not None:
    assert tuple(layer.bias.shape) == tuple(plain.bias.shape)
  assert tuple(got.shape) == tuple(plain_out.shape)


def test_parameters_are_those_of_a_dense_on_the_kernels_matrix():
  # Query projection, matrix 16 x 32: FedPara 2 * R * (16 + 32), low-rank R * (16 + 32), bias
  # 4 * 8.
  x = np.zeros((1, 5, 16), np.float32)
  fedpara, lowrank = _layer('fedpara', CASES[0], rank=3), _layer('lowrank', CASES[0], rank=3)
  fedpara(x), lowrank(x)
  assert fedpara.count_params() == 2 * 3 * 48 + 32 == 320
  assert lowrank.count_params() == 3 * 48 + 32 == 176
  assert fedpara.original_param_count() == 16 * 32 + 32


def _model():
  """Two EinsumDense projections (as attention's) and a Dense head, random weights."""
  tokens = keras.Input((5, 16))
  # Sizes given for every axis: Keras 3's EinsumDense leaves a None of output_shape unknown.
  h = keras.layers.EinsumDense('abc,cde->abde', (5, 4, 8), bias_axes='de', name='q')(tokens)
  h = keras.layers.EinsumDense('abcd,cde->abe', (5, 16), bias_axes='e', activation='relu',
                               name='o')(h)
  model = keras.Model(tokens, keras.layers.Dense(3, name='head')(keras.layers.Flatten()(h)))
  model.set_weights([RNG.normal(scale=0.3, size=w.shape).astype(np.float32)
                     for w in model.get_weights()])
  return model


def _tokens():
  return RNG.normal(size=(4, 5, 16)).astype(np.float32)


@pytest.mark.parametrize('scheme', sorted(CLASSES))
def test_adapters_start_as_the_model_and_merge_into_plain_einsum_dense(scheme):
  model = _model()
  twin = kl.add_adapters(model, scheme, rank=2, alpha=3, trainable=['head'])
  tokens = _tokens()
  np.testing.assert_array_equal(np64(twin(tokens)), np64(model(tokens)))
  names = [adapters.variable_name(v) for v in twin.trainable_variables]
  assert not [n for n in names if 'base_kernel' in n or n in ('q/bias', 'o/bias')]
  for v in twin.trainable_variables:
    v.assign(RNG.normal(size=v.shape).astype(np.float32))
  q = twin.get_layer('q')
  # W = W0 + (alpha / rank) * D, D the numpy matrix put back into (16, 4, 8).
  want = (np64(model.get_layer('q').kernel)
          + 1.5 * numpy_matrix(q.factorization, scheme).reshape(16, 4, 8))
  np.testing.assert_allclose(np64(q.composed_kernel()), want, rtol=1e-5, atol=1e-5)
  merged = kl.export(twin)
  assert [type(layer).__name__ for layer in merged.layers[1:3]] == ['EinsumDense'] * 2
  np.testing.assert_allclose(np64(merged(tokens)), np64(twin(tokens)), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np64(merged.get_layer('q').kernel), want, rtol=1e-5, atol=1e-5)


def test_targets_pick_einsum_dense_by_type():
  model = _model()
  assert adapters.select_targets(model, keras.layers.EinsumDense) == ['q', 'o']
  assert adapters.select_targets(model) == ['q', 'o', 'head']


def test_a_low_rank_fit_is_the_truncated_svd_of_the_kernels_matrix():
  model = _model()
  twin = kl.convert(model, 'lowrank', rank=5, include=['q'], init='fit')
  matrix = einsum_layout.to_matrix(np64(model.get_layer('q').kernel), 'abc,cde->abde')
  assert matrix.shape == (16, 32)
  singular = np.linalg.svd(matrix, compute_uv=False)
  # Eckart-Young: the best rank-5 error is the norm of the other singular values.
  want = np.sqrt(np.sum(singular[5:] ** 2) / np.sum(singular ** 2))
  np.testing.assert_allclose(twin.get_layer('q').fit_errors[0], want, rtol=1e-4)
  full = kl.convert(model, 'lowrank', rank=16, include=['q'], init='fit')
  tokens = _tokens()
  np.testing.assert_allclose(np64(full(tokens)), np64(model(tokens)), rtol=1e-4, atol=1e-4)


def test_a_model_with_einsum_twins_saves_and_loads(tmp_path):
  twin = kl.add_adapters(_model(), 'fedpara', rank=2, alpha=4, targets=['q'])
  loaded = randomized_then_reloaded(twin, tmp_path / 'twin.keras', RNG)
  tokens = _tokens()
  np.testing.assert_allclose(np64(loaded(tokens)), np64(twin(tokens)), rtol=1e-6, atol=1e-6)
  assert loaded.get_layer('q').equation == 'abc,cde->abde'


@pytest.mark.parametrize('equation, match', [
    ('abc,cde', r"equation must read '<input>,<kernel>-><output>' in letters"),
    ('ab...,bc->ac...', r"equation must read"),
    ('ab,bz->ac', r"equation 'ab,bz->ac': kernel axes \['z'\] are in neither"),
])
def test_bad_equations_are_one_line(equation, match):
  with pytest.raises(ValueError, match=match) as error:
    kl.FedParaEinsumDense(equation, 4, rank=2)
  assert '\n' not in str(error.value)
