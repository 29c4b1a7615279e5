"""The kernel-mean aggregation: the server's factors refitted to the mean of the clients' kernels.

Averaging the factors (FedAvg's default) gives the server `W(theta_mean)`, not the mean kernel
`M = sum_i w_i W(theta_i)` the clients trained (`fedpara_tff.aggregation_error`). With
`aggregation='kernel_mean'` the server instead takes, per factorised kernel, the factors that
minimise `||W(theta) - M||_F`: it starts at the factor mean and takes `GN_STEPS` Gauss-Newton
steps, each solving the linearised problem `min_d ||J d - (M - W(theta))||` by `CG_STEPS`
iterations of CGLS from 0 (`keras_layers.cgls.tensorflow_cgls`: one forward- and one
reverse-mode derivative of the composition each, then `d` rescaled to the best multiple along
itself), of which the fraction (1, 1/2, 1/4 or 1/8) that lowers the residual most is kept, and
none if none does. Fixed counts, no randomness: the same inputs give
the same factors, on both backends. What the factors cannot express (a Hadamard product of two
rank-R terms holds rank at most R^2; a low-rank term rank R) stays as residual, which the
aggregation error then reports (docs/DESIGN.md, "Kernel-mean aggregation").

The refit replaces the factor entries of the round's mean update, `u' = x - theta_refit`, so every
server step of the shared round (FedAvg's, the server optimizers', SCAFFOLD's, FedDyn's,
MIME-lite's) takes it as it takes the factor mean. Other variables (biases, plain layers) are
linear in themselves: their mean is already the kernel mean.
"""

from typing import Any, List, Sequence

import tensorflow as tf

from keras_layers import cgls

# Gauss-Newton steps and CGLS iterations per step (the fractions of each step tried:
# `keras_layers.cgls.STEP_FRACTIONS`; docs/DESIGN.md, "Kernel-mean aggregation").
GN_STEPS = 4
CG_STEPS = 10


def refit_kernel(kernel_map, target, values: Sequence[Any], steps: int = GN_STEPS,
                 cg_steps: int = CG_STEPS) -> List[tf.Tensor]:
  """The global factors of one kernel (`kernel_map`, a `fedpara_tff.aggregation_error.
  KernelMap`) refitted to `target` from `values` (in `kernel_map.names`' order):
  `keras_layers.cgls.gauss_newton_fit` on the composition of the global factors."""
  compose = lambda factors: kernel_map.factorization.global_kernel(
      dict(zip(kernel_map.names, factors)))
  return cgls.gauss_newton_fit(compose, target, values, steps, cg_steps)


def refit_update(maps: Sequence[Any], mean_kernels: Sequence[Any], global_values: Sequence[Any],
                 mean_update: Sequence[Any]) -> List[tf.Tensor]:
  """The round's mean update (one array per global variable) with each factorised kernel's
  factors refitted to its mean kernel: `x - theta_refit` there, the factor mean's elsewhere."""
  global_values, mean_update = list(global_values), list(mean_update)
  theta = [x - u for x, u in zip(global_values, mean_update)]
  wide = lambda t: tf.cast(t, tf.float64)
  for kernel_map, target in zip(maps, mean_kernels):
    # In float64: CGLS in float32 turns the last-bit differences of two runtimes' sums into
    # differences of 1e-3 after a few steps; in float64 the backends agree to 1e-5.
    refitted = refit_kernel(kernel_map, wide(target),
                            [wide(theta[p]) for p in kernel_map.positions])
    for position, value in zip(kernel_map.positions, refitted):
      mean_update[position] = global_values[position] - tf.cast(value, global_values[position]
                                                                .dtype)
  return mean_update
