"""`build_fedpara_process` (TFF's builders behind our aggregator and broadcast) against the
published update equations, written here in numpy on a one-layer linear model, for one and two
rounds: FedAvg with client / server momentum and the decay schedule, FedAdam / FedYogi / FedAdagrad (Reddi et al., ICLR 2021; the constants are TFF's
defaults, which `build_fedpara_process` keeps: Adam and Yogi with bias-corrected step,
epsilon 1e-7 / 1e-3, Yogi's preconditioner starting at 1e-6, Adagrad's at 0.1 with epsilon
1e-7 inside the square root) and MIME-lite with SGD-momentum (Karimireddy et al., 2020).

Notation: client k holds n_k examples, starts from the server's x and runs one epoch of
minibatch steps; the server's pseudo-gradient is `D = sum_k n_k (x - y_k) / sum_k n_k`.
"""

import collections

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

import fedpara_tff

FEATURES, CLASSES, BATCH = 4, 2, 3
SIZES = (5, 7, 4)
CLIENT_LR, SERVER_LR = 0.3, 0.7
SPEC = collections.OrderedDict(x=tf.TensorSpec([None, FEATURES], tf.float32),
                               y=tf.TensorSpec([None], tf.int32))


def _data():
  rng = np.random.default_rng(11)
  return [(rng.normal(size=(n, FEATURES)).astype(np.float32),
           rng.integers(0, CLASSES, n).astype(np.int32)) for n in SIZES]


def _initial():
  rng = np.random.default_rng(5)
  return [rng.normal(scale=0.5, size=(FEATURES, CLASSES)).astype(np.float32),
          rng.normal(scale=0.1, size=(CLASSES,)).astype(np.float32)]


def grads(params, x, y):
  """Mean cross-entropy of `z = x W + b` and its gradient [dW, db]."""
  w, b = params
  z = x @ w + b
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  d = p.copy()
  d[np.arange(len(y)), y] -= 1
  d /= len(y)
  return [x.T @ d, d.sum(0)]


def batches(x, y):
  return [(x[s:s + BATCH], y[s:s + BATCH]) for s in range(0, len(y), BATCH)]


def client(x0, data, lr, mu=0.0, momentum=0.0, fixed_momentum=None):
  """One epoch of minibatch steps from x0: SGD on the loss plus FedProx's `mu/2 ||w - x0||^2`;
  with `momentum` a per-round heavy ball `a <- momentum a + g, w <- w - lr a` (a from 0); with
  `fixed_momentum` (MIME-lite) the server's accumulator a_s, not updated: `w <- w - lr (beta a_s
  + g)`."""
  w = [p.copy() for p in x0]
  acc = [np.zeros_like(p) for p in w]
  for xb, yb in batches(*data):
    g = [gi + mu * (wi - ai) for gi, wi, ai in zip(grads(w, xb, yb), w, x0)]
    if fixed_momentum is not None:
      beta, a_s = fixed_momentum
      step = [beta * a + gi for a, gi in zip(a_s, g)]
    else:
      acc = [momentum * a + gi for a, gi in zip(acc, g)]
      step = acc
    w = [wi - lr * s for wi, s in zip(w, step)]
  return w


def pseudo_gradient(x, ys):
  n = np.array(SIZES, np.float64)
  return [sum(nk * (xi - y[i]) for nk, y in zip(n, ys)) / n.sum() for i, xi in enumerate(x)]


def full_gradient(x, data):
  """MIME's full-batch gradient at x: the example-weighted mean of the batch gradients."""
  total = [np.zeros_like(p) for p in x]
  for xb, yb in batches(*data):
    total = [t + len(yb) * g for t, g in zip(total, grads(x, xb, yb))]
  return [t / len(data[1]) for t in total]


class Server:
  """The server optimisers on the pseudo-gradient D (one instance per run)."""

  def __init__(self, kind, momentum=0.0, beta_2=0.999):
    self.kind, self.momentum, self.beta_2, self.t = kind, momentum, beta_2, 0
    self.m = self.v = None

  def step(self, x, d):
    self.t += 1
    if self.m is None:
      self.m = [np.zeros_like(p) for p in x]
      self.v = [np.full_like(p, {'fedyogi': 1e-6, 'fedadagrad': 0.1}.get(self.kind, 0.0))
                for p in x]
    if self.kind in ('fedavg', 'fedprox', 'mimelite'):
      self.m = [self.momentum * m + di for m, di in zip(self.m, d)]
      return [xi - SERVER_LR * m for xi, m in zip(x, self.m)]
    if self.kind == 'fedadagrad':
      self.v = [v + di**2 for v, di in zip(self.v, d)]
      return [xi - SERVER_LR * di / np.sqrt(v + 1e-7) for xi, di, v in zip(x, d, self.v)]
    b1, b2 = 0.9, self.beta_2
    self.m = [m + (di - m) * (1 - b1) for m, di in zip(self.m, d)]
    if self.kind == 'fedadam':
      self.v = [v + (di**2 - v) * (1 - b2) for v, di in zip(self.v, d)]
      eps = 1e-7
    else:   # fedyogi
      self.v = [v + (1 - b2) * np.sign(di**2 - v) * di**2 for v, di in zip(self.v, d)]
      eps = 1e-3
    lr = SERVER_LR * np.sqrt(1 - b2**self.t) / (1 - b1**self.t)
    return [xi - lr * m / (np.sqrt(v) + eps) for xi, m, v in zip(x, self.m, self.v)]


def numpy_rounds(algorithm, rounds, data, mu=0.0, client_momentum=0.0, server_momentum=0.0,
                 decay=1.0, server_beta_2=0.999):
  x, server = _initial(), Server(algorithm, server_momentum, server_beta_2)
  a_s = [np.zeros_like(p) for p in x]   # MIME-lite's server-held momentum
  for t in range(rounds):
    lr = CLIENT_LR * decay**t
    if algorithm == 'mimelite':
      ys = [client(x, d, lr, fixed_momentum=(client_momentum, a_s)) for d in data]
      fulls = [full_gradient(x, d) for d in data]
      n = np.array(SIZES, np.float64)
      mean_full = [sum(nk * f[i] for nk, f in zip(n, fulls)) / n.sum() for i in range(len(x))]
      a_s = [client_momentum * a + g for a, g in zip(a_s, mean_full)]
    else:
      ys = [client(x, d, lr, mu=mu, momentum=client_momentum) for d in data]
    x = server.step(x, pseudo_gradient(x, ys))
  return x


def _model():
  return tf.keras.Sequential([tf.keras.Input((FEATURES,)), tf.keras.layers.Dense(CLASSES)])


CASES = {
    'fedavg_decay_and_server_momentum': dict(algorithm='fedavg', lr_decay=0.5,
                                             server_momentum=0.9),
    'fedavg_client_momentum': dict(algorithm='fedavg', client_momentum=0.9),
    'fedadam': dict(algorithm='fedadam'),
    # The FedPara paper's FedAdam (Table 3): beta_2 0.99 instead of TFF's 0.999.
    'fedadam_beta_2': dict(algorithm='fedadam', server_beta_2=0.99),
    'fedyogi': dict(algorithm='fedyogi'),
    'fedadagrad': dict(algorithm='fedadagrad'),
    'mimelite': dict(algorithm='mimelite', client_momentum=0.9),
}


@pytest.mark.parametrize('case', sorted(CASES))
def test_one_and_two_rounds_equal_the_published_equations(case):
  kwargs = CASES[case]
  data = _data()
  process = fedpara_tff.build_fedpara_process(
      fedpara_tff.keras_model_fn_to_tff(_model, SPEC), client_learning_rate=CLIENT_LR,
      server_learning_rate=SERVER_LR, **kwargs)
  state = process.set_model_weights(process.initialize(), tff.learning.models.ModelWeights(
      trainable=_initial(), non_trainable=[]))
  datasets = [tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=x, y=y)).batch(BATCH)
              for x, y in data]
  for rounds in (1, 2):
    state = process.next(state, datasets).state
    want = numpy_rounds(kwargs['algorithm'], rounds, data,
                        mu=kwargs.get('proximal_strength', 0.0),
                        client_momentum=kwargs.get('client_momentum', 0.0),
                        server_momentum=kwargs.get('server_momentum', 0.0),
                        decay=kwargs.get('lr_decay', 1.0),
                        server_beta_2=kwargs.get('server_beta_2', 0.999))
    got = process.get_model_weights(state).trainable
    for g, w in zip(got, want):
      np.testing.assert_allclose(np.asarray(g), w, rtol=2e-5, atol=2e-6,
                                 err_msg=f'{case}, round {rounds}')



def test_tff_fed_prox_has_the_wrong_sign_and_build_fedpara_process_refuses_it():
  """TFF 0.87's `build_weighted_fed_prox` adds `mu (x - w)` to the gradient, the gradient of
  `-mu/2 ||w - x||^2`: clients are pushed away from the server model. Pinned here (one round
  equals the equations with -mu, not with mu), so a TFF upgrade that fixes it is noticed; our
  FedProx runs on the shared round (tests/test_round_equations.py)."""
  data = _data()
  model_fn = fedpara_tff.keras_model_fn_to_tff(_model, SPEC)
  process = tff.learning.algorithms.build_weighted_fed_prox(
      model_fn, proximal_strength=0.5,
      client_optimizer_fn=tff.learning.optimizers.build_sgdm(CLIENT_LR),
      server_optimizer_fn=tff.learning.optimizers.build_sgdm(SERVER_LR))
  state = process.set_model_weights(process.initialize(), tff.learning.models.ModelWeights(
      trainable=_initial(), non_trainable=[]))
  datasets = [tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=x, y=y)).batch(BATCH)
              for x, y in data]
  got = [np.asarray(w) for w in process.get_model_weights(process.next(state, datasets).state)
         .trainable]
  flipped, paper = (numpy_rounds('fedprox', 1, data, mu=mu) for mu in (-0.5, 0.5))
  for g, f, p in zip(got, flipped, paper):
    np.testing.assert_allclose(g, f, rtol=2e-5, atol=2e-6)
    assert np.abs(g - p).max() > 1e-3
  with pytest.raises(ValueError, match=r"algorithm='fedprox': TFF 0.87's FedProx adds the "
                                       r'proximal gradient with the wrong sign'):
    fedpara_tff.build_fedpara_process(model_fn, algorithm='fedprox')


SERVER_OPTIMIZERS = {'fedavg': 'sgd', 'fedadam': 'adam', 'fedyogi': 'yogi',
                     'fedadagrad': 'adagrad'}


@pytest.mark.parametrize('backend', ['tff', 'tf'])
@pytest.mark.parametrize('case', sorted(CASES))
def test_the_shared_round_gives_the_same_equations(case, backend):
  """The same algorithms on fedpara_tff's own round (`algorithms.ServerOptimizer`, client
  momentum in the local optimizer, `algorithms.MimeLite`), which `--backend=tf` (the GPU path)
  also runs."""
  from fedpara_tff import tf_backend  # pylint: disable=g-import-not-at-top
  kwargs = dict(CASES[case])
  algorithm = kwargs.pop('algorithm')
  data = _data()
  driver = fedpara_tff.build_fedavg_driver(
      _model, SPEC, client_learning_rate=CLIENT_LR, server_learning_rate=SERVER_LR,
      algorithm='mimelite' if algorithm == 'mimelite' else 'fedavg',
      server_optimizer=SERVER_OPTIMIZERS.get(algorithm, 'sgd'),
      client_executor=None if backend == 'tff' else tf_backend.on_devices(), **kwargs)
  runner = driver
  state = runner.initialize(_initial())
  datasets = [tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=x, y=y)).batch(BATCH)
              for x, y in data]
  ids = [str(i) for i in range(len(datasets))]
  for rounds in (1, 2):
    state, _ = runner.next(state, ids, datasets)
    want = numpy_rounds(algorithm, rounds, data,
                        client_momentum=kwargs.get('client_momentum', 0.0),
                        server_momentum=kwargs.get('server_momentum', 0.0),
                        decay=kwargs.get('lr_decay', 1.0),
                        server_beta_2=kwargs.get('server_beta_2', 0.999))
    # Yogi divides by sqrt(v) + 1e-3 with v from 1e-6: float32 rounding of (1 - b2) moves the
    # weights by a few 1e-6 (TFF's builder rounds it the other way).
    atol = 1e-5 if algorithm == 'fedyogi' else 2e-6
    for g, w in zip(state['global_weights'], want):
      np.testing.assert_allclose(np.asarray(g), w, rtol=2e-5, atol=atol,
                                 err_msg=f'{case}, round {rounds}, backend {backend}')
