"""The step-size rule `factor_lr_scale='safe'` (docs/DESIGN.md, "Step-size rule").

Each factorised kernel's first-order SGD step is the plain kernel's step projected on directions
its factors can move it (the image of a Krylov space, `factors.SAFE_STEPS` CGLS iterations):
checked against autodiff (explicit Jacobians of the composition, the kernel's gradient recorded at
the layer) with float64 least squares, against a hand-derived numpy step, and for the bound it
promises (step no longer than the plain layer's, first-order loss decrease no larger).
"""

import numpy as np
import pytest
import tensorflow as tf

from experiments.analysis import step_measures
import keras_layers as kl
from keras_layers import factors
from keras_layers import jacobian
from tests import numpy_reference as ref
from tests.factor_cases import CASES
from tests.factor_cases import LAYERS
from tests.factor_cases import SCHEMES
from tests.factor_cases import factorizations as _factorizations
from tests.factor_cases import grads_and_kernel_grads as _grads_and_kernel_grads
from tests.factor_cases import jacobian_matrix as _jacobian
from tests.factor_cases import loss as _loss
from tests.factor_cases import pair as _pair

def _krylov_projection(a, j, steps):
  """The projection of `j` on `A` times the Krylov space of `A^T A` and `A^T j` (float64, an
  orthonormal basis by Gram-Schmidt applied twice)."""
  basis = []
  vector = a.T @ j
  for _ in range(steps):
    for _ in range(2):
      for b in basis:
        vector = vector - (b @ vector) * b
    norm = np.linalg.norm(vector)
    if norm < 1e-12 * np.linalg.norm(a.T @ j):
      break
    basis.append(vector / norm)
    vector = a.T @ (a @ basis[-1])
  image = a @ np.stack(basis, axis=1)
  return image @ np.linalg.lstsq(image, j, rcond=None)[0]


def _flat(tensors):
  return np.concatenate([np.asarray(t, np.float64).reshape(-1) for t in tensors])


def _kernel_steps(kind, scheme, nonlinearity, dtype):
  """Per kernel of a 'safe' layer: `(A, J, A^T J of the paper's layer, A d of the rule)`."""
  (plain, safe), inputs = _pair(kind, scheme, nonlinearity, seed=7, dtype=dtype)
  plain_grads, _ = _grads_and_kernel_grads(plain, inputs)
  safe_grads, kernel_grads = _grads_and_kernel_grads(safe, inputs)
  position, steps = 0, []
  for factorization, j in zip(_factorizations(safe), kernel_grads):
    count = len(factorization.factors)
    a = _jacobian(factorization)
    steps.append((a, j.reshape(-1).astype(np.float64),
                  _flat(plain_grads[position:position + count]),
                  a @ _flat(safe_grads[position:position + count])))
    position += count
  return steps


@pytest.mark.parametrize('kind, scheme, nonlinearity', CASES)
def test_the_step_is_the_projection_on_the_krylov_image(kind, scheme, nonlinearity):
  # float64 layers, so that CGLS's rounding does not hide a wrong formula.
  for a, j, chain_rule, step in _kernel_steps(kind, scheme, nonlinearity, 'float64'):
    # The paper's parameterisation gets the chain rule's gradient A^T J ...
    np.testing.assert_allclose(chain_rule, a.T @ j, rtol=1e-9, atol=1e-12)
    # ... 'safe' a gradient d whose kernel step A d is the projection of J on A K_k.
    projection = _krylov_projection(a, j, factors.SAFE_STEPS)
    np.testing.assert_allclose(step, projection, rtol=0, atol=1e-6 * np.linalg.norm(j))
    # At least what the first CGLS step (the plain step projected on A A^T J) reaches.
    u = a @ (a.T @ j)
    assert step @ step >= (j @ u) ** 2 / (u @ u) * (1 - 1e-9)


@pytest.mark.parametrize('kind, scheme, nonlinearity', CASES)
def test_the_float32_step_obeys_the_bound(kind, scheme, nonlinearity):
  for _, j, _, step in _kernel_steps(kind, scheme, nonlinearity, 'float32'):
    # No longer than the plain step J; lowers the loss, to first order, by no more; a
    # projection leaves J - step orthogonal to the step (up to float32 rounding).
    assert np.linalg.norm(step) <= np.linalg.norm(j) * (1 + 1e-4)
    assert j @ step <= (j @ j) * (1 + 1e-4)
    assert abs((j - step) @ step) <= 1e-4 * (j @ j)
    assert j @ step > 0


def test_the_bound_holds_on_random_layers_against_a_real_small_step():
  # The bound is a first-order statement; a real step of size eta on the factors lowers the loss
  # by eta * ||proj J||^2 + O(eta^2), never by more than the plain step's eta ||J||^2 to first order.
  rng = np.random.default_rng(0)
  for trial in range(6):
    kind = ['dense', 'conv2d', 'conv1d'][trial % 3]
    scheme = list(SCHEMES)[trial % 3]
    (_, safe), inputs = _pair(kind, scheme, None, seed=int(rng.integers(1000)))
    grads, (j,) = _grads_and_kernel_grads(safe, inputs)
    eta = 1e-4
    before = float(_loss(safe(inputs)))
    for variable, grad in zip(safe.factorization.factors.values(), grads):
      variable.assign_sub(eta * grad)
    decrease = before - float(_loss(safe(inputs)))
    j = j.reshape(-1).astype(np.float64)
    assert decrease <= eta * (j @ j) * 1.01 + 1e-6
    assert decrease > 0


def test_one_sgd_step_equals_the_hand_derived_numpy_step():
  rng = np.random.default_rng(3)
  inputs = rng.normal(size=(8, 6))
  targets = rng.normal(size=(8, 5))
  # float64: CGLS's rounding in float32 moves d along directions A barely sees.
  layer = kl.FedParaDense(5, rank=2, use_bias=False, factor_lr_scale='safe', dtype='float64')
  layer(inputs)
  names = ('x1', 'y1', 'x2', 'y2')
  before = [layer.factorization.factors[n].numpy().astype(np.float64) for n in names]
  eta = 0.05
  optimizer = tf.keras.optimizers.SGD(eta)
  with tf.GradientTape() as tape:
    loss = 0.5 * tf.reduce_sum(tf.square(layer(inputs) - targets))
  optimizer.apply_gradients(zip(tape.gradient(loss, layer.trainable_variables),
                                layer.trainable_variables))
  # J = x^T (x W - t) for this loss.
  x1, y1, x2, y2 = before
  w = ref.combine('fedpara', [ref.to_keras(ref.matrix_term(x1, y1)),
                              ref.to_keras(ref.matrix_term(x2, y2))])
  j = inputs.T @ (inputs @ w - targets)
  grads = ref.fedpara_dense_safe_gradients(*before, j, factors.SAFE_STEPS)
  for name, value, grad in zip(names, before, grads):
    np.testing.assert_allclose(layer.factorization.factors[name].numpy(), value - eta * grad,
                               rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize('kind', list(LAYERS))
def test_the_function_and_the_variables_are_unchanged(kind):
  (plain, safe), inputs = _pair(kind, 'fedpara', None, seed=2)
  np.testing.assert_array_equal(plain(inputs).numpy(), safe(inputs).numpy())
  # Same variables (names, shapes, values): the same bytes travel.
  def names(layer):
    return [(v.name.split('/', 1)[1], v.shape) for v in layer.weights]

  assert names(plain) == names(safe)
  assert plain.count_params() == safe.count_params()


def test_the_option_round_trips_through_get_config():
  layer = kl.FedParaConv2D(4, 3, factor_lr_scale='safe')
  clone = kl.FedParaConv2D.from_config(layer.get_config())
  assert clone.factor_lr_scale == 'safe'
  assert kl.FedParaDense.from_config(kl.FedParaDense(3).get_config()).factor_lr_scale is None


def test_the_jacobian_correction_differentiates_through_the_rule():
  (plain, safe), inputs = _pair('dense', 'fedpara', None, seed=5)
  model = tf.keras.Sequential([safe])
  model.build(inputs.shape)

  def objective():
    outputs = model(inputs)
    return _loss(outputs), outputs

  _, _, plain_grads = jacobian.loss_and_gradients(model, objective, model.trainable_variables,
                                                  0.1, 0.0)
  _, _, corrected = jacobian.loss_and_gradients(model, objective, model.trainable_variables,
                                                0.1, 1.0)
  assert all(np.all(np.isfinite(g.numpy())) for g in corrected)
  # The correction adds its own (projected) gradient: the result differs from the plain one.
  assert any(not np.allclose(a.numpy(), b.numpy()) for a, b in zip(plain_grads, corrected))
  del plain


@pytest.mark.parametrize('kind, scheme', [('dense', 'lowrank'), ('dense', 'fedpara'),
                                          ('conv2d', 'fedpara')])
def test_step_gain_measures_what_a_safe_rule_can_reach(kind, scheme):
  """experiments.analysis.step_measures: step length, safe gain and reachable fraction against numpy."""
  (plain, _), inputs = _pair(kind, scheme, None, seed=11, dtype='float64')
  _, (j,) = _grads_and_kernel_grads(plain, inputs)
  factorization = plain.factorization
  step_length, safe_gain, reachable = step_measures.step_rule_measures(
      factorization, tf.constant(j), iterations=factors.SAFE_STEPS + 4)
  a = _jacobian(factorization)
  j = j.reshape(-1).astype(np.float64)
  u = a @ (a.T @ j)
  assert step_length == pytest.approx(np.linalg.norm(u) / np.linalg.norm(j), rel=1e-4)
  # After k CGLS steps: the projection of J on A times the Krylov space.
  for measured, steps in ((safe_gain, factors.SAFE_STEPS), (reachable, factors.SAFE_STEPS + 4)):
    projected = _krylov_projection(a, j, steps)
    # CGLS without reorthogonalisation: equal in exact arithmetic, a hair below in float64.
    exact = (projected @ projected) / (j @ j)
    assert exact * (1 - 1e-3) <= measured <= exact * (1 + 1e-9)
  assert safe_gain <= reachable + 1e-6 <= 1 + 1e-6
