"""The client optimizer of a round: SGD or Adam, reset at the start of every round.

The shared round (`client_work.build_client_train`) steps its variables
with `LocalOptimizer`; the runs on TFF's builders get the same optimizer from
`tff_optimizer`, so both use one update rule:

* `sgd`: `w <- w - eta g`; with momentum beta (TFF's SGDM) `a <- beta a + g`,
  `w <- w - eta a`, `a` from zero each round;
* `adam` (Kingma and Ba, 2015, in the form of TFF's and Keras' Adam):
  `m <- b1 m + (1 - b1) g`, `v <- b2 v + (1 - b2) g^2`,
  `w <- w - eta sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)`, with
  `b1 = 0.9`, `b2 = 0.999`, `eps = 1e-7` and `t` the client's step in the
  round (`m`, `v` and `t` start from zero each round, as TFF's client work
  does). With the step-size rule under Adam (`keras_layers.sign_rule`) each
  factor's update is multiplied by its kernel's scale `1 / ||A||_inf`, read from
  the current factors before the step.
"""

import tensorflow as tf
import tensorflow_federated as tff

from fedpara_tff import choices

CLIENT_OPTIMIZERS = choices.CLIENT_OPTIMIZERS
BETA_1, BETA_2, EPSILON = 0.9, 0.999, 1e-7
check = choices.check_client_optimizer


class LocalOptimizer:
  """Steps `variables` with `name`'s rule; `reset()` clears Adam's moments and step count.

  Args:
    name: one of `CLIENT_OPTIMIZERS`.
    variables: the model variables it updates (their order is the gradients' order).
    momentum: SGD momentum in [0, 1) (0: none).
    update_scales: Adam only: None, or a function returning one scalar per
      variable that its update is multiplied by (`keras_layers.sign_rule.prepare`).
  """

  def __init__(self, name, variables, momentum=0.0, update_scales=None):
    self.name = check(name, momentum)
    if update_scales is not None and self.name != 'adam':
      raise ValueError(f'update_scales (the step-size rule under Adam) needs '
                       f"client_optimizer='adam'; got {name!r}.")
    self._update_scales = update_scales
    self._variables = list(variables)
    self._slots = []
    self.momentum = float(momentum)
    if self.momentum:
      self._slots = [tf.Variable(tf.zeros_like(v), trainable=False, name='momentum')
                     for v in self._variables]
    if self.name == 'adam':
      self._step = tf.Variable(0.0, trainable=False, name='adam_step')
      self._slots = [(tf.Variable(tf.zeros_like(v), trainable=False, name='adam_m'),
                      tf.Variable(tf.zeros_like(v), trainable=False, name='adam_v'))
                     for v in self._variables]

  def reset(self):
    """Zeroes the moments and the step count (call at the start of a round)."""
    if self.momentum:
      for a in self._slots:
        a.assign(tf.zeros_like(a))
    if self.name == 'adam':
      self._step.assign(0.0)
      for m, v in self._slots:
        m.assign(tf.zeros_like(m))
        v.assign(tf.zeros_like(v))

  def apply(self, grads, learning_rate):
    """One step of every variable along its gradient in `grads` at `learning_rate`."""
    if self.name == 'sgd' and self.momentum:
      for variable, grad, a in zip(self._variables, grads, self._slots):
        variable.assign_sub(learning_rate * a.assign(self.momentum * a + grad))
      return
    if self.name == 'sgd':
      for variable, grad in zip(self._variables, grads):
        variable.assign_sub(learning_rate * grad)
      return
    step = self._step.assign_add(1.0)
    normalized = (learning_rate * tf.sqrt(1.0 - tf.pow(BETA_2, step))
                  / (1.0 - tf.pow(BETA_1, step)))
    # Every scale is read from the variables before any of them moves.
    scales = self._update_scales() if self._update_scales else [1.0] * len(self._variables)
    for variable, grad, (m, v), scale in zip(self._variables, grads, self._slots, scales):
      m.assign(m + (grad - m) * (1.0 - BETA_1))
      v.assign(v + (tf.square(grad) - v) * (1.0 - BETA_2))
      variable.assign_sub(scale * normalized * m / (tf.sqrt(v) + EPSILON))


def tff_optimizer(name, learning_rate, momentum=0.0):
  """TFF's optimizer for `name` at `learning_rate` (`momentum` only with SGD)."""
  if check(name, momentum) == 'adam':
    return tff.learning.optimizers.build_adam(learning_rate, beta_1=BETA_1, beta_2=BETA_2,
                                              epsilon=EPSILON)
  return tff.learning.optimizers.build_sgdm(learning_rate, momentum=momentum or None)
