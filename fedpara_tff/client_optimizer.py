"""The client optimizer of a round: SGD or Adam, reset at the start of every round.

The shared round (`client_work.build_client_train`) steps its variables with `LocalOptimizer`,
whose rule is `fedpara_tff.update_transforms`' (the server optimizer's too); the runs on TFF's
builders get the same optimizer from `tff_optimizer`, so both use one update rule:

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
from fedpara_tff import update_transforms

CLIENT_OPTIMIZERS = choices.CLIENT_OPTIMIZERS
BETA_1 = update_transforms.ADAM_BETA_1
BETA_2 = update_transforms.ADAM_BETA_2
EPSILON = update_transforms.ADAM_EPSILON
check = choices.check_client_optimizer


class LocalOptimizer:
  """Steps `variables` with `name`'s rule (`update_transforms.build`), its state (momentum,
  Adam's moments and step count) in variables that `reset()` sets back to their start.

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
    self.momentum = float(momentum)
    self._transform = update_transforms.build(self.name, self.momentum)
    self._specs = [tf.TensorSpec(v.shape, v.dtype) for v in self._variables]
    self._state = [tf.Variable(value, trainable=False, name=f'{self.name}_state')
                   for value in self._transform.init(self._specs)]

  def reset(self):
    """Sets the optimizer's state back to its start (call at the start of a round)."""
    for variable, value in zip(self._state, self._transform.init(self._specs)):
      variable.assign(value)

  def apply(self, grads, learning_rate):
    """One step of every variable along its gradient in `grads` at `learning_rate`."""
    # Every scale is read from the variables before any of them moves.
    scales = self._update_scales() if self._update_scales else None
    current = [tf.convert_to_tensor(v) for v in self._state]
    steps, state = self._transform.update(list(grads), current, learning_rate, scales)
    for variable, value in zip(self._state, state):
      variable.assign(value)
    for variable, step in zip(self._variables, steps):
      variable.assign_sub(step)


def tff_optimizer(name, learning_rate, momentum=0.0):
  """TFF's optimizer for `name` at `learning_rate` (`momentum` only with SGD)."""
  if check(name, momentum) == 'adam':
    return tff.learning.optimizers.build_adam(learning_rate, beta_1=BETA_1, beta_2=BETA_2,
                                              epsilon=EPSILON)
  return tff.learning.optimizers.build_sgdm(learning_rate, momentum=momentum or None)
