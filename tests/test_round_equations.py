"""The shared round (`fedpara_tff.personalization`: client update, aggregation, server step)
against its equations, written here in numpy on a tiny linear model.

For every method the driver runs (FedAvg, FedPer, pFedPara, local-only; the first three also
with FedProx, SCAFFOLD and FedDyn, whose equations `numpy_rounds` gives), on both backends:
client k starts from the server's global values and its own local values, runs E epochs of
minibatch SGD at `lr * decay**t` (t = the round, from 0) on the mean cross-entropy, and sends
`delta_k = global_start - global_end`; the server applies
`w <- w - eta_s * sum_k n_k delta_k / sum_k n_k` (n_k its examples); local values stay on the
client and carry over to its next round. A sign, weighting or schedule error in the round
changes these numbers (the backend-agreement tests compare the round with itself).
"""

import collections

import numpy as np
import pytest
import tensorflow as tf

import fedpara_tff
from fedpara_tff import tf_backend
import keras_layers as kl

FEATURES, HIDDEN, CLASSES, BATCH = 4, 3, 2, 3
SIZES = {'a': 5, 'b': 7, 'c': 4}
SCHEDULE = (['a', 'b'], ['b', 'c'])            # 'b' trains twice, from its own local values
LR, DECAY, SERVER_LR, EPOCHS = 0.3, 0.5, 0.7, 2
SPEC = collections.OrderedDict(x=tf.TensorSpec([None, FEATURES], tf.float32),
                               y=tf.TensorSpec([None], tf.int32))


def _arrays():
  rng = np.random.default_rng(7)
  return {c: (rng.normal(size=(n, FEATURES)).astype(np.float32),
              rng.integers(0, CLASSES, n).astype(np.int32)) for c, n in SIZES.items()}


def _dataset(x, y):
  return tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=x, y=y)).batch(BATCH)


# ---- numpy: models, gradients by hand ----------------------------------------------------

def _softmax_ce_grad(z, y):
  """Mean cross-entropy of logits z (B, C) and its gradient with respect to z."""
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  loss = -np.log(p[np.arange(len(y)), y]).mean()
  d = p.copy()
  d[np.arange(len(y)), y] -= 1
  return loss, d / len(y)


def two_dense_grads(params, x, y):
  """`z = (x W1 + b1) W2 + b2`; params [W1 (F, H), b1, W2 (H, C), b2]."""
  w1, b1, w2, b2 = params
  h = x @ w1 + b1
  loss, d = _softmax_ce_grad(h @ w2 + b2, y)
  dh = d @ w2.T
  return loss, [x.T @ dh, dh.sum(0), h.T @ d, d.sum(0)]


def pfedpara_grads(params, x, y):
  """pFedPara dense layer, paper layout: `W = (X1 Y1^T) * (X2 Y2^T + 1)` (out, in), `z = x W^T + b`;
  params [X1 (C, R), Y1 (F, R), X2, Y2, b]."""
  x1, y1, x2, y2, b = params
  w1, w2 = x1 @ y1.T, x2 @ y2.T
  loss, d = _softmax_ce_grad(x @ (w1 * (w2 + 1)).T + b, y)
  dw = d.T @ x                                  # dL/dW, (C, F)
  dw1, dw2 = dw * (w2 + 1), dw * w1
  return loss, [dw1 @ y1, dw1.T @ x1, dw2 @ y2, dw2.T @ x2, d.sum(0)]


def local_sgd(grads_fn, params, x, y, lr, is_global, correction):
  """E epochs of minibatch SGD; returns the trained params, the summed loss x batch size and
  the number of steps. `correction(g, w, w_start, j)` is added to the j-th global parameter's
  gradient: FedProx `mu (w - x)`; SCAFFOLD `c - c_i`; FedDyn `-g_k + alpha (w - x)`."""
  start_params = [p.copy() for p in params]
  params = [p.copy() for p in params]
  loss_sum, steps = 0.0, 0
  for _ in range(EPOCHS):
    for start in range(0, len(y), BATCH):
      xb, yb = x[start:start + BATCH], y[start:start + BATCH]
      loss, grads = grads_fn(params, xb, yb)
      j = 0
      corrected = []
      for g, p, p0, glob in zip(grads, params, start_params, is_global):
        corrected.append(g + correction(p, p0, j) if glob else g)
        j += glob
      loss_sum += loss * len(yb)
      steps += 1
      params = [p - lr * g for p, g in zip(params, corrected)]
  return params, loss_sum, steps


def numpy_rounds(grads_fn, initial, is_global, arrays, algorithm='fedavg', mu=0.0):
  """The rounds of SCHEDULE by the equations.

  Returns (global values, {client: local values + algorithm state}, losses, server control).
  FedAvg / FedProx: example-weighted mean, `x <- x - eta_g mean(x - y)`. SCAFFOLD (option II):
  `c_i+ = c_i - c + (x - y) / (K eta)`, `x <- x - eta_g mean_S(x - y)`,
  `c <- c + |S|/N mean_S(c_i+ - c_i)`. FedDyn: `g_k <- g_k - alpha (y - x)`,
  `h <- h - alpha |S|/N mean_S(y - x)`, `x <- mean_S(y) - h / alpha`. Unweighted means for both.
  """
  glob = [p for p, g in zip(initial, is_global) if g]
  control = [np.zeros_like(p) for p in glob]
  local, state = {}, {}
  losses = []
  n_all = len(SIZES)
  for t, ids in enumerate(SCHEDULE):
    lr = LR * DECAY**t
    deltas, extras, weights, loss_sum, examples = [], [], [], 0.0, 0
    for c in ids:
      own = iter(local.get(c, [p for p, g in zip(initial, is_global) if not g]))
      shared = iter(glob)
      start = [next(shared) if g else next(own) for g in is_global]
      c_i = state.get(c, [np.zeros_like(p) for p in glob])
      x = glob
      correction = {
          'fedavg': lambda w, w0, j: mu * (w - w0),
          'scaffold': lambda w, w0, j, c_i=c_i: control[j] - c_i[j],
          'feddyn': lambda w, w0, j, c_i=c_i: -c_i[j] + ALPHA * (w - w0),
      }['fedavg' if algorithm == 'fedprox' else algorithm]
      trained, client_loss, steps = local_sgd(grads_fn, start, *arrays[c], lr, is_global,
                                              correction)
      y = [e for e, g in zip(trained, is_global) if g]
      deltas.append([a - b for a, b in zip(x, y)])
      if algorithm == 'scaffold':
        new = [ci - cs + (a - b) / (steps * lr) for ci, cs, a, b in zip(c_i, control, x, y)]
        extras.append([n - ci for n, ci in zip(new, c_i)])
        state[c] = new
      elif algorithm == 'feddyn':
        state[c] = [gk - ALPHA * (b - a) for gk, a, b in zip(c_i, x, y)]
      weights.append(1.0 if algorithm in ('scaffold', 'feddyn') else SIZES[c])
      local[c] = [e for e, g in zip(trained, is_global) if not g]
      loss_sum += client_loss
      examples += SIZES[c]
    if glob:
      mean = [sum(w * d[i] for w, d in zip(weights, deltas)) / sum(weights)
              for i in range(len(glob))]
      if algorithm == 'feddyn':
        control = [h + ALPHA * len(ids) / n_all * m for h, m in zip(control, mean)]
        glob = [w - m - h / ALPHA for w, m, h in zip(glob, mean, control)]
      else:
        glob = [w - SERVER_LR * m for w, m in zip(glob, mean)]
      if algorithm == 'scaffold':
        mean_extra = [sum(e[i] for e in extras) / len(extras) for i in range(len(glob))]
        control = [cs + len(ids) / n_all * m for cs, m in zip(control, mean_extra)]
    losses.append(loss_sum / (examples * EPOCHS))
  full_local = {c: local[c] + state.get(c, []) for c in local}
  return glob, full_local, losses, control


# ---- the code under test ------------------------------------------------------------------

def two_dense():
  return tf.keras.Sequential([tf.keras.Input((FEATURES,)),
                              tf.keras.layers.Dense(HIDDEN, name='body'),
                              tf.keras.layers.Dense(CLASSES, name='head')])


def pfedpara_dense():
  return tf.keras.Sequential([tf.keras.Input((FEATURES,)),
                              kl.PFedParaDense(CLASSES, rank=2, name='layer')])


def _initial(shapes):
  rng = np.random.default_rng(3)
  return [rng.normal(scale=0.5, size=s).astype(np.float32) for s in shapes]


TWO_DENSE_SHAPES = [(FEATURES, HIDDEN), (HIDDEN,), (HIDDEN, CLASSES), (CLASSES,)]
# The layer's trainable variables: x1 (out, R), y1 (in, R), x2_local, y2_local, bias.
PFEDPARA_SHAPES = [(CLASSES, 2), (FEATURES, 2), (CLASSES, 2), (FEATURES, 2), (CLASSES,)]

METHODS = {
    # name: (driver builder, keras model, numpy gradients, shapes, which variables travel)
    'fedavg': (fedpara_tff.build_fedavg_driver, two_dense, two_dense_grads, TWO_DENSE_SHAPES,
               [True, True, True, True]),
    'fedper': (lambda m, s, **k: fedpara_tff.build_fedper_driver(m, s, ['head'], **k), two_dense,
               two_dense_grads, TWO_DENSE_SHAPES, [True, True, False, False]),
    'local_only': (fedpara_tff.build_local_only_driver, two_dense, two_dense_grads,
                   TWO_DENSE_SHAPES, [False] * 4),
    'pfedpara': (fedpara_tff.build_pfedpara_driver, pfedpara_dense, pfedpara_grads,
                 PFEDPARA_SHAPES, [True, True, False, False, True]),
}
# FedProx, SCAFFOLD and FedDyn on the same rounds, on the global variables only.
ALPHA = 0.4
ALGORITHM = {name: ('fedavg', {}) for name in METHODS}
for name in ('fedavg', 'fedper', 'pfedpara'):
  for algorithm, options in (('fedprox', dict(proximal_strength=0.5)), ('scaffold', {}),
                             ('feddyn', dict(feddyn_alpha=ALPHA))):
    METHODS[f'{name}_{algorithm}'] = METHODS[name]
    ALGORITHM[f'{name}_{algorithm}'] = (algorithm, options)


@pytest.mark.parametrize('backend', ['tff', 'tf'])
@pytest.mark.parametrize('method', sorted(METHODS))
def test_two_rounds_equal_the_update_equations(method, backend):
  build, keras_model, grads_fn, shapes, is_global = METHODS[method]
  arrays = _arrays()
  initial = _initial(shapes)
  algorithm, options = ALGORITHM[method]
  driver = build(keras_model, SPEC, client_learning_rate=LR, server_learning_rate=SERVER_LR,
                 lr_decay=DECAY, local_epochs=EPOCHS, algorithm=algorithm,
                 num_clients=len(SIZES),
                 client_executor=None if backend == 'tff' else tf_backend.on_devices(), **options)
  assert [bool(g) for g in is_global] == [i in driver.global_index for i in range(len(shapes))]
  runner = driver
  state = runner.initialize(initial)
  losses = []
  for ids in SCHEDULE:
    state, metrics = runner.next(state, ids, [_dataset(*arrays[c]) for c in ids])
    losses.append(float(metrics['train']['loss']))
    assert float(metrics['train']['num_examples']) == sum(SIZES[c] for c in ids)
  want_global, want_local, want_losses, want_control = numpy_rounds(
      grads_fn, initial, is_global, arrays, algorithm, options.get('proximal_strength', 0.0))
  assert len(state['global_weights']) == len(want_global)
  for got, want in zip(state['global_weights'], want_global):
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
  for c in 'abc':
    for got, want in zip(driver.local_state(c), want_local[c]):
      np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
  assert int(state['round_num']) == len(SCHEDULE)
  if algorithm in ('scaffold', 'feddyn'):
    for got, want in zip(state['control'], want_control):
      np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
  else:
    assert 'control' not in state   # FedAvg / FedProx keep the state they always had


def test_scaffold_sends_and_receives_twice_fedavg_bytes():
  """SCAFFOLD's control variates travel both ways: measured, not configured."""
  arrays = _arrays()
  measured = {}
  for algorithm in ('fedavg', 'scaffold', 'feddyn'):
    driver = fedpara_tff.build_fedavg_driver(two_dense, SPEC, algorithm=algorithm,
                                             num_clients=len(SIZES))
    _, metrics = driver.next(driver.initialize(), ['a', 'b'],
                             [_dataset(*arrays[c]) for c in 'ab'])
    measured[algorithm] = (int(metrics['aggregator']['communication']['bytes_uploaded']),
                           int(metrics['train']['bytes_downloaded']))
  elements = sum(int(np.prod(s)) for s in TWO_DENSE_SHAPES)   # 4x3 + 3 + 3x2 + 2 = 23
  assert measured['fedavg'] == (2 * 4 * elements, 2 * 4 * elements)
  assert measured['scaffold'] == (2 * measured['fedavg'][0], 2 * measured['fedavg'][1])
  assert measured['feddyn'] == measured['fedavg']


def test_bad_algorithm_settings_are_named():
  with pytest.raises(ValueError, match=r'feddyn_alpha must be a finite number > 0; got 0'):
    fedpara_tff.build_fedavg_driver(two_dense, SPEC, algorithm='feddyn', feddyn_alpha=0,
                                    num_clients=3)
  with pytest.raises(ValueError, match=r'SCAFFOLD needs num_clients .* got None'):
    fedpara_tff.build_fedavg_driver(two_dense, SPEC, algorithm='scaffold')
  with pytest.raises(ValueError, match=r"algorithm must be one of .* got 'fedsgd'"):
    fedpara_tff.build_fedavg_driver(two_dense, SPEC, algorithm='fedsgd')
  with pytest.raises(ValueError, match=r'algorithm=scaffold corrects SGD steps; got '
                                       r"client_optimizer='adam'"):
    fedpara_tff.build_fedavg_driver(two_dense, SPEC, algorithm='scaffold', num_clients=3,
                                    client_optimizer='adam')
  with pytest.raises(ValueError, match=r'algorithm=feddyn acts on the global variables; this '
                                       r'model has none'):
    fedpara_tff.build_local_only_driver(two_dense, SPEC, algorithm='feddyn', num_clients=3)
  with pytest.raises(ValueError, match=r"proximal_strength=0.5 is FedProx's; algorithm=scaffold"):
    fedpara_tff.build_fedavg_driver(two_dense, SPEC, algorithm='scaffold', num_clients=3,
                                    proximal_strength=0.5)
