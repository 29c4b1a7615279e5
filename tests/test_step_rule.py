"""The step-size rule `factor_lr_scale='safe'` (docs/DESIGN.md, "Step-size rule").

Each factorised kernel's first SGD step is the plain kernel's step projected on the direction
its factors can move it: checked against autodiff (explicit Jacobians of the composition, the
kernel's gradient recorded at the layer), against a hand-derived numpy step, and for the bound it
promises (step no longer than the plain layer's, first-order loss decrease no larger).
"""

import numpy as np
import pytest
import tensorflow as tf

import keras_layers as kl
from keras_layers import jacobian
from tests import numpy_reference as ref

LAYERS = {
    'dense': (lambda s, **kw: getattr(kl, f'{s}Dense')(5, **kw), (4, 6)),
    'conv1d': (lambda s, **kw: getattr(kl, f'{s}Conv1D')(4, 3, **kw), (2, 7, 3)),
    'conv2d': (lambda s, **kw: getattr(kl, f'{s}Conv2D')(4, 3, **kw), (2, 5, 5, 3)),
    'lstm': (lambda s, **kw: getattr(kl, f'{s}LSTM')(4, **kw), (3, 5, 3)),
}
SCHEMES = {'fedpara': 'FedPara', 'pfedpara': 'PFedPara', 'lowrank': 'LowRank'}
CASES = [(k, s, n) for k in LAYERS for s in SCHEMES for n in (None, 'tanh')]


def _factorizations(layer):
  return layer.cell.factorizations if hasattr(layer, 'cell') else layer.factorizations


def _loss(outputs):
  # A loss whose gradient is not isotropic or aligned with anything in particular.
  return tf.reduce_sum(tf.sin(3.0 * outputs) + 0.5 * tf.square(outputs))


def _pair(kind, scheme, nonlinearity, seed):
  """The same layer built twice from the same weights: paper parameterisation, then 'safe'."""
  make, shape = LAYERS[kind]
  inputs = tf.random.stateless_normal(shape, [seed, 0])
  layers = []
  for option in (None, 'safe'):
    layer = make(SCHEMES[scheme], rank=2, nonlinearity=nonlinearity, factor_lr_scale=option)
    layer(inputs)
    layers.append(layer)
  layers[1].set_weights(layers[0].get_weights())
  return layers, inputs


def _explicit(factorization, kernel_grad):
  """`(g, u)`, numpy: `g = A^T J` and `u = A g` with `A` the full Jacobian of the raw composition."""
  names = list(factorization.factors)
  variables = [factorization.factors[n] for n in names]
  with tf.GradientTape(persistent=True) as tape:
    # pylint: disable-next=protected-access
    w = factorization._combine(factorization.factors)
  jacobians = [tape.jacobian(w, v).numpy().reshape(w.shape.num_elements(), -1)
               for v in variables]
  a = np.concatenate(jacobians, axis=1).astype(np.float64)
  g = a.T @ kernel_grad.reshape(-1).astype(np.float64)
  return g, a @ g


def _grads_and_kernel_grads(layer, inputs):
  factorizations = _factorizations(layer)
  with jacobian.recording_kernels(factorizations) as recorded:
    with tf.GradientTape() as tape:
      loss = _loss(layer(inputs))
  kernels = [k for uses in recorded for k in uses]
  variables = [v for f in factorizations for v in f.factors.values()]
  grads = tape.gradient(loss, variables + kernels)
  return grads[:len(variables)], [j.numpy() for j in grads[len(variables):]]


def _flat(tensors):
  return np.concatenate([np.asarray(t, np.float64).reshape(-1) for t in tensors])


@pytest.mark.parametrize('kind, scheme, nonlinearity', CASES)
def test_the_gradient_is_the_projection_and_obeys_the_bound(kind, scheme, nonlinearity):
  (plain, safe), inputs = _pair(kind, scheme, nonlinearity, seed=7)
  plain_grads, _ = _grads_and_kernel_grads(plain, inputs)
  safe_grads, kernel_grads = _grads_and_kernel_grads(safe, inputs)
  position = 0
  for factorization, j in zip(_factorizations(safe), kernel_grads):
    count = len(factorization.factors)
    g, u = _explicit(factorization, j)
    # The paper's parameterisation gets the chain rule's gradient g = A^T J ...
    np.testing.assert_allclose(_flat(plain_grads[position:position + count]), g,
                               rtol=1e-4, atol=1e-6)
    # ... and 'safe' gets s g with s = ||g||^2 / ||A g||^2.
    scale = (g @ g) / (u @ u)
    np.testing.assert_allclose(_flat(safe_grads[position:position + count]), scale * g,
                               rtol=1e-4, atol=1e-6)
    # The bound: the kernel's first-order step -eta s A g is no longer than the plain step
    # -eta J, and lowers the loss (to first order) by no more than the plain step does.
    j = j.reshape(-1).astype(np.float64)
    step = scale * u
    assert np.linalg.norm(step) <= np.linalg.norm(j) * (1 + 1e-6)
    assert j @ step <= (j @ j) * (1 + 1e-6)
    # It is the orthogonal projection of J on u: what is left is orthogonal to u.
    assert abs((j - step) @ u) <= 1e-5 * np.linalg.norm(j) * np.linalg.norm(u)
    position += count


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
  inputs = rng.normal(size=(8, 6)).astype(np.float32)
  targets = rng.normal(size=(8, 5)).astype(np.float32)
  layer = kl.FedParaDense(5, rank=2, use_bias=False, factor_lr_scale='safe')
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
  j = inputs.T.astype(np.float64) @ (inputs @ w - targets)
  grads = ref.fedpara_dense_safe_gradients(*before, j)
  for name, value, grad in zip(names, before, grads):
    np.testing.assert_allclose(layer.factorization.factors[name].numpy(), value - eta * grad,
                               rtol=1e-4, atol=1e-6)


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
