"""What a safe step-size rule can reach on one factorised kernel (`experiments.analysis.step_gain`'s
step-rule columns; docs/DESIGN.md, "Step-size rule").

With `A` the Jacobian of the kernel's composition and `J = dL/dW`: the length of the paper's
first-order kernel step `A A^T J` over the plain step's, and the first-order loss decrease of the
'safe' rule (and of the same rule with more CGLS iterations) over the plain step's.
"""

import numpy as np
import tensorflow as tf

import keras_layers
from keras_layers import cgls


def _composition(factorization):
  """`(fn, xs)`: the raw composition as a function of the factors' values, and those values."""
  names = list(factorization.factors)
  xs = [tf.convert_to_tensor(factorization.factors[n]) for n in names]
  return (lambda values: factorization.compose_unscaled(dict(zip(names, values)))), xs


def _sq(tensors):
  return sum(float(tf.reduce_sum(t * t)) for t in tensors)


def step_rule_measures(factorization, j, iterations):
  """`(step_length, safe_gain, reachable_fraction)` of one kernel for the gradient `j`.

  The rule's own CGLS (`cgls.tensorflow_cgls`) gives the factor step `d`;
  `||A d||^2 / ||J||^2` is its first-order decrease over the plain step's, after
  `factors.SAFE_STEPS` iterations (the 'safe' rule) and after `iterations` (at least as many).
  """
  fn, xs = _composition(factorization)
  vjp, jvp = cgls.tensorflow_products(fn, xs)
  j_sq = _sq([j])
  step_length = np.sqrt(_sq([jvp(vjp(j))]) / j_sq)
  fractions = []
  for steps in (keras_layers.factors.SAFE_STEPS,
                max(iterations, keras_layers.factors.SAFE_STEPS)):
    d = cgls.tensorflow_cgls(fn, xs, j, steps)
    fractions.append(_sq([jvp(d)]) / j_sq)
  return (step_length, *fractions)
