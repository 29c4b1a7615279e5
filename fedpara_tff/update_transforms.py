"""The update rules of the client and server optimizers, as small composable transforms.

In optax's style: a transform is a pair of pure functions, `init(specs) -> state` and
`update(updates, state, learning_rate, scales=None) -> (updates, state)`, over lists of tensors
(one per variable); `chain` runs several in order, threading each one's state. What the last
transform returns is the step: the caller computes `w <- w - step`. The client optimizer
(`fedpara_tff.client_optimizer.LocalOptimizer`, state in variables, reset every round) and the
server optimizer (`fedpara_tff.algorithms.ServerOptimizer`, state in the server state) are both
built here by `build`, so SGD, momentum and Adam are written once.

* `trace(beta)`: momentum, `a <- beta a + g` (from zero), passes `a` on;
* `scale_by_learning_rate()`: `eta g`;
* `scale_by_adam(b1, b2, eps)`: `m <- m + (g - m)(1 - b1)`, `v <- v + (g^2 - v)(1 - b2)`,
  step `eta sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)`; with `yogi=True`
  `v <- v + (1 - b2) sign(g^2 - v) g^2` (Zaheer et al., 2018); `v0` the initial `v`;
* `scale_by_adagrad(v0, eps)`: `v <- v + g^2`, step `eta g / sqrt(v + eps)`.

The adaptive transforms fold the learning rate into their step, as TFF's and Keras' Adam do
(`eta` times the bias correction, then times `m`), so the numbers are theirs to the last bit;
`scales` (one scalar per variable: the step-size rule under Adam, `keras_layers.sign_rule`)
multiplies that learning rate per variable.
"""

from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import tensorflow as tf

Tensors = List[tf.Tensor]
Scales = Optional[Sequence[tf.Tensor]]


class Transform(NamedTuple):
  """`init(specs) -> state` (TF values, from `tf.TensorSpec`s of the variables),
  `update(updates, state, learning_rate, scales) -> (updates, state)`, and `state_size(n)`: how
  many arrays the state of `n` variables holds."""
  init: Callable[[Sequence[tf.TensorSpec]], Tensors]
  update: Callable[[Tensors, Tensors, tf.Tensor, Scales], Tuple[Tensors, Tensors]]
  state_size: Callable[[int], int]


def _zeros(specs):
  return [tf.zeros(s.shape, s.dtype) for s in specs]


def trace(beta: float) -> Transform:
  """Momentum: `a <- beta a + g`, from zero; passes `a` on."""

  def update(updates, state, learning_rate, scales=None):
    del learning_rate, scales
    accumulated = [beta * a + g for a, g in zip(state, updates)]
    return accumulated, accumulated

  return Transform(_zeros, update, lambda n: n)


def scale_by_learning_rate() -> Transform:
  """`eta g`: the plain gradient step."""

  def update(updates, state, learning_rate, scales=None):
    del scales
    return [learning_rate * g for g in updates], state

  return Transform(lambda specs: [], update, lambda n: 0)


def scale_by_adam(beta_1: float, beta_2: float, epsilon: float, yogi: bool = False,
                  initial_v: float = 0.0) -> Transform:
  """Adam's (or, with `yogi`, Yogi's) step at the learning rate; state `[m..., v..., t]`."""

  def init(specs):
    return _zeros(specs) + [tf.fill(s.shape, initial_v) for s in specs] + [tf.constant(0.0)]

  def update(updates, state, learning_rate, scales=None):
    n = len(updates)
    m, v, t = state[:n], state[n:2 * n], state[2 * n] + 1.0
    m = [mi + (g - mi) * (1.0 - beta_1) for mi, g in zip(m, updates)]
    if yogi:
      v = [vi + (1.0 - beta_2) * tf.sign(tf.square(g) - vi) * tf.square(g)
           for vi, g in zip(v, updates)]
    else:
      v = [vi + (tf.square(g) - vi) * (1.0 - beta_2) for vi, g in zip(v, updates)]
    rate = learning_rate * tf.sqrt(1.0 - tf.pow(beta_2, t)) / (1.0 - tf.pow(beta_1, t))
    rates = [rate] * n if scales is None else [s * rate for s in scales]
    steps = [r * mi / (tf.sqrt(vi) + epsilon) for r, mi, vi in zip(rates, m, v)]
    return steps, m + v + [t]

  return Transform(init, update, lambda n: 2 * n + 1)


def scale_by_adagrad(initial_v: float = 0.1, epsilon: float = 1e-7) -> Transform:
  """Adagrad's step at the learning rate: `v <- v + g^2`, `eta g / sqrt(v + eps)`."""

  def update(updates, state, learning_rate, scales=None):
    del scales
    v = [vi + tf.square(g) for vi, g in zip(state, updates)]
    return [learning_rate * g / tf.sqrt(vi + epsilon) for g, vi in zip(updates, v)], v

  return Transform(lambda specs: [tf.fill(s.shape, initial_v) for s in specs], update,
                   lambda n: n)


def chain(*transforms: Transform) -> Transform:
  """The transforms in order, each taking the previous one's updates; the state is their
  states concatenated (a transform without state adds nothing)."""

  def init(specs):
    return [value for t in transforms for value in t.init(specs)]

  def update(updates, state, learning_rate, scales=None):
    new_state, start = [], 0
    for transform in transforms:
      size = transform.state_size(len(updates))
      updates, part = transform.update(updates, state[start:start + size], learning_rate, scales)
      new_state += part
      start += size
    return updates, new_state

  return Transform(init, update, lambda n: sum(t.state_size(n) for t in transforms))


# TFF's and Keras' Adam constants (the client's Adam and the server's FedAdam).
ADAM_BETA_1, ADAM_BETA_2, ADAM_EPSILON = 0.9, 0.999, 1e-7


def build(name: str, momentum: float = 0.0, beta_2: float = ADAM_BETA_2) -> Transform:
  """The step of optimizer `name` (`sgd`, `adam`, `yogi` or `adagrad`) as one transform.

  `momentum` applies to `sgd` (TFF's SGDM; 0: none); `beta_2` to `adam` and `yogi` (TFF's
  defaults: 0.999). Yogi takes TFF's `v0 = 1e-6` and `epsilon = 1e-3`, Adagrad `v0 = 0.1`.
  """
  if name == 'sgd':
    return (chain(trace(momentum), scale_by_learning_rate()) if momentum
            else scale_by_learning_rate())
  if name == 'adam':
    return scale_by_adam(ADAM_BETA_1, beta_2, ADAM_EPSILON)
  if name == 'yogi':
    return scale_by_adam(ADAM_BETA_1, beta_2, 1e-3, yogi=True, initial_v=1e-6)
  if name == 'adagrad':
    return scale_by_adagrad()
  raise ValueError(f"optimizer must be 'sgd', 'adam', 'yogi' or 'adagrad'; got {name!r}.")
