"""EinsumDense layers with a factorised kernel: FedPara, pFedPara and low-rank.

Keras' `EinsumDense` computes `activation(einsum(equation, inputs, kernel) + bias)` with a
kernel of any number of axes (MultiHeadAttention's projections are such layers). Its twins here
compose that kernel from the factors of one matrix, the kernel's input axes against its output
axes (`keras_layers.einsum_layout`; docs/DESIGN.md, "EinsumDense"), so that `convert` and
`add_adapters` treat an `EinsumDense` as they treat a `Dense`.
"""

from typing import Any, Optional

from keras_layers import backend
from keras_layers import base
from keras_layers import einsum_layout
from keras_layers.backend import keras
from keras_layers.backend import ops

_register = backend.register


class _FactorizedEinsumDense(base.FactorizedLayer):
  """An `EinsumDense` whose kernel is composed from factors.

  Args:
    equation: as Keras' `EinsumDense` (e.g. `'abc,cde->abde'`); an ellipsis only on the left.
    output_shape: as Keras' `EinsumDense`: an int, or the sizes of the output's axes after the
      first (None: that axis' input size).
    bias_axes: the output axes the bias spans (letters of the output), or None (no bias).
    **kwargs: the FedPara options and Keras arguments of `FactorizedLayer` (`gamma` / `rank` /
      `param_ratio`, `nonlinearity`, `factor_init`, `activation`, regularizers, `adapter`, ...).

  The factorised matrix is `(rows, columns)`: the product of the kernel's input axes' sizes by
  that of its output axes' (`einsum_layout.matrix_shape`), so that `rank` and `gamma` mean what
  they mean for a `Dense` of that many inputs and units.
  """

  plain_class = keras.layers.EinsumDense

  def __init__(self, equation: str, output_shape: Any, bias_axes: Optional[str] = None,
               **kwargs: Any):
    kwargs.pop('use_bias', None)   # the bias is bias_axes' (configs carry the base's use_bias)
    super().__init__(use_bias=bool(bias_axes), **kwargs)
    einsum_layout.parse(equation)
    self.equation = str(equation)
    self.partial_output_shape = (output_shape if isinstance(output_shape, int)
                                 else tuple(output_shape))
    self.bias_axes = bias_axes or None
    self.factorization = None
    self.kernel_shape = None

  def build(self, input_shape):
    self.kernel_shape, bias_shape, _ = einsum_layout.shapes(
        self.equation, backend.dims(input_shape), self.partial_output_shape, self.bias_axes)
    matrix = einsum_layout.matrix_shape(self.equation, self.kernel_shape)
    self._check_rank(matrix)
    self.factorization = self._add_factorization(matrix)
    if bias_shape is not None:
      self._add_bias(bias_shape)
    self.built = True

  def composed_kernel(self):
    """The kernel, `kernel_shape`, composed from the current factors."""
    return self._to_kernel(self.factorization.compose())

  def _to_kernel(self, matrix):
    return einsum_layout.from_matrix(ops, matrix, self.equation, self.kernel_shape)

  @backend.no_autograph
  def call(self, inputs):
    inputs = ops.cast(inputs, self.compute_dtype)
    matrix = self._recorded(self.factorization.compose(), self.factorization)
    outputs = ops.einsum(self.equation, inputs, self._to_kernel(matrix))
    if self.bias is not None:
      outputs = outputs + self.bias
    return self.activation(outputs)

  def compute_output_shape(self, input_shape):
    *_, full = einsum_layout.shapes(self.equation, backend.dims(input_shape),
                                    self.partial_output_shape, self.bias_axes)
    return backend.output_shape(full)

  def plain_weights(self):
    """`[kernel(, bias)]` of the equivalent `EinsumDense`, as numpy arrays."""
    weights = [self.composed_kernel()] + ([self.bias] if self.bias is not None else [])
    return [backend.to_numpy(w) for w in weights]

  def get_config(self):
    config = super().get_config()
    config.update(equation=self.equation, output_shape=self.partial_output_shape,
                  bias_axes=self.bias_axes)
    return config

  @classmethod
  def from_plain(cls, layer, **options):
    """A twin of the plain Keras `EinsumDense` `layer` with `options`."""
    config = layer.get_config()
    return cls(config['equation'], config['output_shape'], config.get('bias_axes'),
               **cls.common_kwargs_from_plain(config), **options)

  def to_plain(self):
    """An unbuilt Keras `EinsumDense` with this layer's arguments."""
    kwargs = self.common_plain_kwargs()
    kwargs.pop('use_bias')
    return keras.layers.EinsumDense(self.equation, self.partial_output_shape,
                                    bias_axes=self.bias_axes, **kwargs)


@_register
class FedParaEinsumDense(_FactorizedEinsumDense):
  """`EinsumDense` with a FedPara kernel: the matrix `(X1 Y1^T) * (X2 Y2^T)` of
  `_FactorizedEinsumDense`, reshaped to the kernel.

  >>> layer = FedParaEinsumDense('abc,cde->abde', (None, 4, 8), bias_axes='de', rank=3)
  >>> layer(tf.zeros((2, 5, 16))).shape
  TensorShape([2, 5, 4, 8])
  >>> layer.count_params()  # 2 * 3 * (16 + 32) + 32
  320
  """

  scheme = 'fedpara'


@_register
class PFedParaEinsumDense(_FactorizedEinsumDense):
  """`EinsumDense` with the personalised pFedPara kernel `W1 * (W2 + 1)` (`W2` local), as
  `PFedParaDense` on the kernel's matrix."""

  scheme = 'pfedpara'


@_register
class LowRankEinsumDense(_FactorizedEinsumDense):
  """`EinsumDense` with a low-rank kernel matrix `X Y^T` (the baseline; LoRA as an adapter)."""

  scheme = 'lowrank'


FACTORIZED_TYPES = (FedParaEinsumDense, PFedParaEinsumDense, LowRankEinsumDense)
