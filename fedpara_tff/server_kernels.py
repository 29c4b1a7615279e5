"""The round's factorised kernels at the server, as TFF computations: the clients' mean kernel,
the kernel-mean refit and the aggregation error (`fedpara_tff.aggregation_error`,
`fedpara_tff.kernel_mean`), for `fedpara_tff.stateful_round`'s `finish_round`."""

import types
from typing import Optional

import tensorflow as tf
import tensorflow_federated as tff

from fedpara_tff import aggregation_error
from fedpara_tff import kernel_mean


def build_kernel_means(parts, upload_type: tff.Type) -> Optional[types.SimpleNamespace]:
  """The round's factorised kernels at the server, or None for a model without factorised
  kernels made of global factors (`parts`: the round's `fedpara_tff.round_layout.ModelParts`;
  `upload_type`: the TFF type of one client's upload): an object with

  * `mean(global values at SERVER, uploads at CLIENTS, weights at CLIENTS)`: the clients' kernels
    `W(x - u_i)` averaged with the aggregation's weights (a client whose upload is not finite
    weighs 0), at SERVER (telemetry: not counted as bytes; `fedpara_tff.aggregation_error`);
  * `refit`: `(mean kernels, global values, mean upload) -> mean upload` with the factors
    refitted to the mean kernels (`fedpara_tff.kernel_mean`), only under
    `aggregation='kernel_mean'`, else None: TFF traces a computation where it is defined, and
    the refit's unrolled Gauss-Newton steps take seconds to trace (half of a small model's
    process build);
  * `error`: `(mean kernels, global values, mean upload) -> OrderedDict(update_share,
    kernel_share)`, the aggregation error of the mean upload the server steps with.
  """
  layout = parts.layout
  if not layout.kernels:
    return None
  n_global = len(layout.global_specs)
  kernels_type = tff.types.tensorflow_to_type(
      [tf.TensorSpec(k.factorization.kernel_shape, tf.float32) for k in layout.kernels])

  @tff.tensorflow.computation(layout.global_type, upload_type, tf.float32)
  def client_kernels(global_values, upload, weight):
    kernels, finite = aggregation_error.client_kernels(layout.kernels, list(global_values),
                                                       list(upload)[:n_global])
    return kernels, tf.where(finite, weight, tf.zeros_like(weight))

  def refit(mean_kernels, global_values, mean_upload):
    mean_upload = list(mean_upload)
    return kernel_mean.refit_update(layout.kernels, list(mean_kernels), list(global_values),
                                    mean_upload[:n_global]) + mean_upload[n_global:]

  @tff.tensorflow.computation(kernels_type, layout.global_type, upload_type)
  def error(mean_kernels, global_values, mean_upload):
    return aggregation_error.measure(layout.kernels, list(mean_kernels), list(global_values),
                                     list(mean_upload)[:n_global])

  def mean(global_values, upload, weight):
    kernels, kept_weight = tff.federated_map(client_kernels, (
        tff.federated_broadcast(global_values), upload, weight))
    return tff.federated_mean(kernels, kept_weight)

  if parts.settings.aggregation == 'kernel_mean':
    refit = tff.tensorflow.computation(kernels_type, layout.global_type,
                                       upload_type)(refit)
  else:
    refit = None
  return types.SimpleNamespace(mean=mean, refit=refit, error=error)
