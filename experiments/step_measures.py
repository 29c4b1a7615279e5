"""What a safe step-size rule can reach on one factorised kernel (`experiments.step_gain`'s
step-rule columns; docs/DESIGN.md, "Step-size rule").

With `A` the Jacobian of the kernel's composition and `J = dL/dW`: the length of the paper's
first-order kernel step `A A^T J` over the plain step's, and the first-order loss decrease of the
'safe' rule (and of the same rule with more CGLS iterations) over the plain step's.
"""

import numpy as np
import tensorflow as tf

import keras_layers


def _jvp(factorization, tangents):
  """`A t`: the kernel's first-order change along factor tangents `t`."""
  variables = list(factorization.factors.values())
  with tf.autodiff.ForwardAccumulator(variables, list(tangents)) as accumulator:
    kernel = factorization.compose_unscaled()
  return accumulator.jvp(kernel)


def _vjp(factorization, cotangent):
  """`A^T c`: the factors' gradient of `<c, W>`."""
  variables = list(factorization.factors.values())
  with tf.GradientTape() as tape:
    kernel = factorization.compose_unscaled()
  return tape.gradient(kernel, variables, output_gradients=cotangent,
                       unconnected_gradients=tf.UnconnectedGradients.ZERO)


def _sq(tensors):
  return sum(float(tf.reduce_sum(t * t)) for t in tensors)


def step_rule_measures(factorization, j, iterations):
  """`(step_length, safe_gain, reachable_fraction)` of one kernel for the gradient `j`.

  The rule's own CGLS (`keras_layers.backend.cgls`) gives the factor step `d`; `||A d||^2 /
  ||J||^2` is its first-order decrease over the plain step's, after `factors.SAFE_STEPS`
  iterations (the 'safe' rule) and after `iterations` (at least as many).
  """
  j_sq = _sq([j])
  u = _jvp(factorization, _vjp(factorization, j))
  step_length = np.sqrt(_sq([u]) / j_sq)
  dot = lambda a, b: tf.add_n([tf.reduce_sum(x * y) for x, y in zip(a, b)])
  fractions = []
  for steps in (keras_layers.factors.SAFE_STEPS,
                max(iterations, keras_layers.factors.SAFE_STEPS)):
    d = keras_layers.backend.cgls(lambda c: _vjp(factorization, c),
                                  lambda t: _jvp(factorization, t), j, steps, dot, tf.where)
    fractions.append(_sq([_jvp(factorization, d)]) / j_sq)
  return (step_length, *fractions)
