"""What averaging the factors loses: the aggregation error of each factorised kernel, per round.

FedAvg over a factorised model averages each factor, so the server's kernel
`W(sum_i w_i theta_i)` is not the mean of the kernels the clients trained,
`M = sum_i w_i W(theta_i)` (weights normalised). For a low-rank kernel the difference is second
order in the clients' differences; for FedPara's Hadamard product of two products it reaches
fourth order. For each factorised kernel and round this module measures (docs/DESIGN.md,
"Aggregation error")

    e = ||M - W(theta_mean)||_F / ||M - W(theta_prev)||_F   (share of the round's averaged
                                                             kernel update lost or added)
    n = ||M - W(theta_mean)||_F / ||M||_F                   (share of the averaged kernel)

where `theta_i = x - u_i` are client i's global factors after training (the server's `x` minus
its upload `u_i`), `theta_mean = x - mean_i u_i` the factor mean, `theta_prev = x`, and only the
clients whose upload is finite count (as in the aggregation). `W` is what the global factors
compose (`keras_layers.KernelFactorization.global_kernel`): the kernel for FedPara and low-rank,
pFedPara's global term `f(W1)`. It measures the averaging, not the server's step (which FedAdam
and the other server optimizers apply to the mean afterwards).

It is simulation telemetry: it needs the clients' factors where they are aggregated, which TFF's
round has (`fedpara_tff.stateful_round`) and the TF backend has (`fedpara_tff.in_process_round`),
and moves nothing that the byte accounting counts.
"""

import collections
from typing import Any, List, NamedTuple, Sequence

import tensorflow as tf


class KernelMap(NamedTuple):
  """One factorised kernel of the model, seen from the round's global variables.

  Attributes:
    label: the kernel's label (`labelled_factorizations`: the layer name, or
      `<layer>/kernel`, `<layer>/recurrent` for an LSTM).
    positions: positions in the round's global variables of its global factors.
    names: those factors' names, in the same order.
    factorization: its `keras_layers.KernelFactorization` (composes the global kernel).
  """
  label: str
  positions: List[int]
  names: List[str]
  factorization: Any

  def compose(self, global_values: Sequence[Any]) -> tf.Tensor:
    """`W(theta)` from the round's global values (stored scale)."""
    stored = {n: global_values[p] for n, p in zip(self.names, self.positions)}
    return self.factorization.global_kernel(stored)


def kernel_maps(model, global_index: Sequence[int]) -> List[KernelMap]:
  """The `KernelMap` of every factorised kernel of `model` with global factors (a FedPer local
  layer has none), in the model's order.

  Args:
    model: a Keras model built by the round's `keras_model_fn`.
    global_index: positions in `model.trainable_variables` of the round's global variables.
  """
  import keras_layers  # pylint: disable=g-import-not-at-top
  variables = model.trainable_variables
  position = {id(variables[i]): p for p, i in enumerate(global_index)}
  maps = []
  for layer in keras_layers.factorized_layers(model):
    for label, factorization in layer.labelled_factorizations():
      names = [n for n in factorization.global_names
               if id(factorization.factors[n]) in position]
      if names:
        maps.append(KernelMap(label, [position[id(factorization.factors[n])] for n in names],
                              names, factorization))
  return maps


def client_kernels(maps: Sequence[KernelMap], global_values: Sequence[Any],
                   update: Sequence[Any]):
  """`(kernels, finite)`: the kernels client i trained, `W(x - u_i)` for each of `maps`, and
  whether its update `u_i` (one array per global variable) is finite; a non-finite client's
  kernels are zeros (it weighs 0, as in the aggregation)."""
  update = list(update)
  finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(u)) for u in update])
  trained = [x - tf.where(finite, u, tf.zeros_like(u)) for x, u in zip(global_values, update)]
  return [kernel_map.compose(trained) for kernel_map in maps], finite


def measure(maps: Sequence[KernelMap], mean_kernels: Sequence[Any],
            global_values: Sequence[Any], mean_update: Sequence[Any]) -> collections.OrderedDict:
  """The round's aggregation error from the clients' weighted mean kernels `M` (one per map),
  the server's global values `x` and the weighted mean update.

  Returns:
    `OrderedDict(update_share=[e per kernel], kernel_share=[n per kernel])`, float32 vectors
    (0 where the denominator is 0: no update, or a zero kernel).
  """
  theta_mean = [x - u for x, u in zip(global_values, mean_update)]
  update_share, kernel_share = [], []
  for kernel_map, mean in zip(maps, mean_kernels):
    lost = tf.norm(mean - kernel_map.compose(theta_mean))
    update_share.append(tf.math.divide_no_nan(lost, tf.norm(mean - kernel_map.compose(
        list(global_values)))))
    kernel_share.append(tf.math.divide_no_nan(lost, tf.norm(mean)))
  return collections.OrderedDict(update_share=tf.stack(update_share),
                                 kernel_share=tf.stack(kernel_share))
