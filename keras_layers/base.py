"""Arguments and behaviour common to every factorised layer.

`FactorizedLayer` validates the FedPara options (`gamma`, `rank` or
`param_ratio`, `nonlinearity`, `factor_init`, `factor_lr_scale`) and the usual Keras arguments of
the replaced layer (activation, bias, regularizers, constraints), creates the
factors through `factors.KernelFactorization`, and answers which of its
variables are global (sent to the server) and which are local (pFedPara).
Subclasses set the class attribute `scheme` and arrange shapes.
"""

import math
from typing import Any, Optional, Union

from keras_layers import backend
from keras_layers import factors
from keras_layers import ranks
from keras_layers import validation
from keras_layers.backend import keras

DEFAULT_GAMMA = 0.5

# id(factorization) -> list collecting the kernels a layer's `call` composes
# from that factorization, set by `keras_layers.jacobian.recording_kernels`
# (kept outside the layer so that Keras does not track it).
_KERNEL_RECORDERS = {}

# Constructor arguments shared, with the same meaning, by a factorised layer and
# the plain Keras layer it replaces (used by `convert` and `export`).
SHARED_PLAIN_ARGS = ('activation', 'use_bias', 'bias_initializer',
                     'kernel_regularizer', 'bias_regularizer',
                     'activity_regularizer', 'bias_constraint', 'name', 'dtype',
                     'trainable')


def check_positive_int(value, name):
  """Returns `value` as int, or raises naming the bad value."""
  if not ranks.is_positive_int(value):
    raise ValueError(f'{name} must be a positive integer; got {value!r}.')
  return int(value)


def check_rank_options(gamma, rank, param_ratio):
  """Validates that at most one of gamma, rank, param_ratio is given."""
  given = [n for n, v in (('gamma', gamma), ('rank', rank),
                          ('param_ratio', param_ratio)) if v is not None]
  if len(given) > 1:
    raise ValueError(
        f'give only one of gamma, rank or param_ratio; got {" and ".join(given)} '
        f'(gamma={gamma!r}, rank={rank!r}, param_ratio={param_ratio!r}).')
  if gamma is not None:
    ranks.check_gamma(gamma)
  if rank is not None:
    check_positive_int(rank, 'rank')
  if param_ratio is not None:
    ranks.check_param_ratio(param_ratio)


def check_adapter_options(adapter, adapter_alpha, factor_lr_scale):
  """`(adapter, adapter_alpha)` checked: a bool, and None or a finite positive number given only
  with `adapter=True`; an adapter takes no `factor_lr_scale` (its step-size rules are for
  kernels made by the factors alone). Raises ValueError in one line."""
  if not isinstance(adapter, bool):
    raise ValueError(f'adapter must be True or False; got {adapter!r}.')
  if adapter_alpha is not None:
    if not adapter:
      raise ValueError(f'adapter_alpha={adapter_alpha!r} is for adapters; pass adapter=True '
                       f'or no adapter_alpha.')
    adapter_alpha = validation.finite_positive(adapter_alpha, 'adapter_alpha')
  if adapter and factor_lr_scale is not None:
    raise ValueError(f'an adapter takes no factor_lr_scale (got {factor_lr_scale!r}): the '
                     f'step-size rules are for kernels the factors make alone.')
  return adapter, adapter_alpha


def resolve_rank(scheme, kernel_shape, gamma=None, rank=None, param_ratio=None,
                 layer_name=''):
  """The inner rank of one kernel of a layer.

  For FedPara and pFedPara the rank of each Hadamard term. For the low-rank
  baseline an explicit `rank` is its own inner rank, while `gamma` and
  `param_ratio` pick the inner rank whose parameter count matches the FedPara
  layer at that setting (`2R` for dense).

  An explicit `rank` is capped by nothing but positivity; a rank that adds
  parameters without raising the reachable rank (`ranks.reachable_rank`)
  warns once per shape and rank.
  """
  if rank is not None:
    ranks.warn_if_rank_unreachable(scheme, kernel_shape, rank, layer_name)
    return rank
  if param_ratio is not None:
    fedpara_rank = ranks.rank_for_param_ratio(kernel_shape, param_ratio)
  else:
    fedpara_rank = ranks.rank_for_gamma(
        kernel_shape, DEFAULT_GAMMA if gamma is None else gamma)
  if scheme == 'lowrank':
    return ranks.lowrank_rank_matching(kernel_shape, fedpara_rank)
  return fedpara_rank


def holds_factors(obj):
  """Whether `obj` holds factorised kernels itself: a FedPara / pFedPara / low-rank Dense or
  convolution layer, or a factorised LSTM cell."""
  return isinstance(obj, FactorizedLayer)


def factorized_layers(model: Any) -> list:
  """The factorised layers of `model`, each once, in `backend.sublayers` order.

  The one interface to them: each has `labelled_factorizations()` (`(label,
  factorization)` per kernel), `factorizations` and `local_weights`. Routing,
  the Jacobian correction, kernel analysis and variable classification ask it. A
  package LSTM layer (`FedParaLSTM`, ...) stands for its cell; a factorised cell
  inside another RNN (`keras.layers.RNN(FedParaLSTMCell(...))`) stands for itself.
  """
  modules = backend.sublayers(model)
  owners = {id(m): m for m in modules if getattr(m, 'answers_for_cell', False)}
  owned = {id(m.cell) for m in owners.values()}
  return [m for m in modules
          if id(m) in owners or (holds_factors(m) and id(m) not in owned)]


class FactorizedLayer(keras.layers.Layer):
  """Base of the FedPara, pFedPara and low-rank layers.

  Args:
    gamma: float in [0, 1], picks the rank between `r_min` and `r_max` (docs/DESIGN.md,
      "Rank rule"). Default 0.5 when none of gamma, rank, param_ratio is given.
    rank: explicit inner rank, any positive integer (a rank beyond what the
      kernel can reach warns; see `ranks.reachable_rank`).
    param_ratio: float in (0, 1], target fraction of the plain layer's kernel
      parameters.
    nonlinearity: `None` or `'tanh'`, applied to each composed term.
    factor_init: `'matched_glorot'` (default: the composed kernel has the
      Glorot-uniform variance of the plain layer), `'matched_he'`,
      `'he_fan_in'` or `'he_fan_out'` (He-normal per factor).
    factor_lr_scale: `None` (default), `'safe'`, a positive number `s`, or
      `'matched'`. A number: the factors are stored divided by `sqrt(s)` and
      multiplied back when the kernel is composed: the same function, but SGD
      moves the factors as if their learning rate were `s` times larger.
      `'matched'` uses `s = 1 / G` with `G` the kernel's expected step gain at
      init (`keras_layers.step_gain`), so that one SGD step changes the loss as much
      as the plain layer's step on average (docs/DESIGN.md, "Effective step
      size"). `'safe'` replaces the factors' gradient at every step so that the
      kernel's SGD step is the plain layer's step projected on directions the
      factors can move it: never longer, and never lowering the loss more to
      first order (docs/DESIGN.md, "Step-size rule"). Under client Adam on
      `fedpara_tff`'s shared round the same option scales the kernel's update by
      `1 / ||A||_inf` instead (`keras_layers.sign_rule`; docs/DESIGN.md,
      "Step-size rule under Adam").
    activation: activation function, as in Keras.
    use_bias: whether to add a bias.
    bias_initializer, bias_regularizer, bias_constraint: for the bias.
    kernel_regularizer: applied to the *composed* kernel (same meaning as for
      the plain layer).
    factor_regularizer, factor_constraint: applied to each factor variable.
    activity_regularizer: as in Keras.
    adapter: False (default), or True: the layer is an adapter on a frozen pretrained kernel,
      `W = W0 + (adapter_alpha / rank) * D`, with `D` composed by the factors (FedPara's
      Hadamard product, pFedPara's, or low-rank) and starting at zero; `W0` (the variable
      `base_kernel`, zeros until set: `keras_layers.adapters.add_adapters` sets it) and the bias
      are not trainable (docs/DESIGN.md, "Adapters").
    adapter_alpha: positive number, the adapter's scale numerator (PEFT's `alpha`); default
      the rank, i.e. scale 1. Only with `adapter=True`.
  """

  scheme = None  # 'fedpara' | 'pfedpara' | 'lowrank', set by subclasses.

  def __init__(self, gamma: Optional[float] = None, rank: Optional[int] = None,
               param_ratio: Optional[float] = None,
               nonlinearity: Optional[str] = None, factor_init: str = 'matched_glorot',
               factor_lr_scale: Optional[Union[str, float]] = None, activation: Any = None,
               use_bias: bool = True, bias_initializer: Any = 'zeros',
               kernel_regularizer: Any = None, bias_regularizer: Any = None,
               factor_regularizer: Any = None, activity_regularizer: Any = None,
               factor_constraint: Any = None, bias_constraint: Any = None,
               adapter: bool = False, adapter_alpha: Optional[float] = None, **kwargs: Any):
    super().__init__(activity_regularizer=activity_regularizer, **kwargs)
    self.adapter, self.adapter_alpha = check_adapter_options(adapter, adapter_alpha,
                                                             factor_lr_scale)
    check_rank_options(gamma, rank, param_ratio)
    self.gamma = None if gamma is None else float(gamma)
    self.rank = None if rank is None else int(rank)
    self.param_ratio = None if param_ratio is None else float(param_ratio)
    self.nonlinearity = factors.check_nonlinearity(nonlinearity)
    self.factor_init = factors.check_factor_init(factor_init)
    self.factor_lr_scale = factors.check_factor_lr_scale(factor_lr_scale)
    self.activation = keras.activations.get(activation)
    self.use_bias = bool(use_bias)
    self.bias_initializer = keras.initializers.get(bias_initializer)
    self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
    self.bias_regularizer = keras.regularizers.get(bias_regularizer)
    self.factor_regularizer = keras.regularizers.get(factor_regularizer)
    self.factor_constraint = keras.constraints.get(factor_constraint)
    self.bias_constraint = keras.constraints.get(bias_constraint)
    self.factorizations = []
    self.bias = None

  # -- construction helpers for subclasses ---------------------------------

  def _check_rank(self, *kernel_shapes):
    """Refuses, in one line before any factor is made, an explicit rank above the larger side of
    every kernel of the layer (`ranks.largest_dimension`): such a layer has more than twice the
    plain layer's parameters (`FedParaDense(8, rank=10**6)` on 20 inputs would build 56M, a huge
    convolution rank runs out of memory). Between a kernel's largest rank (`ranks.max_rank`)
    and that bound a rank adds parameters but no rank: it warns
    (`ranks.warn_if_rank_unreachable`) and is kept, as `convert` gives every layer of a model one
    rank and saved models hold such layers.
    """
    if self.rank is None:
      return
    bound = max(ranks.largest_dimension(shape) for shape in kernel_shapes)
    if self.rank > bound:
      useful = max(ranks.max_rank(shape) for shape in kernel_shapes)
      shapes = ', '.join(str(tuple(int(d) for d in shape)) for shape in kernel_shapes)
      raise ValueError(f'{self.name}: rank {self.rank} is above {bound}, the larger side of its '
                       f'kernel{"s" if len(kernel_shapes) > 1 else ""} ({shapes}); give a rank '
                       f'in [1, {useful}] (a larger one adds parameters but no rank).')

  def _add_factorization(self, kernel_shape, prefix=''):
    """Resolves the rank for `kernel_shape` and adds its factors to the layer."""
    rank = resolve_rank(self.scheme, kernel_shape, self.gamma, self.rank,
                        self.param_ratio, layer_name=self.name)
    adapter_scale = None
    if self.adapter:
      adapter_scale = (rank if self.adapter_alpha is None else self.adapter_alpha) / rank
    factorization = factors.KernelFactorization(
        self.scheme, kernel_shape, rank, self.nonlinearity, self.factor_init,
        prefix=prefix, factor_lr_scale=self.factor_lr_scale, adapter_scale=adapter_scale)
    factorization.add_to(self, self.factor_regularizer, self.factor_constraint)
    self.factorizations.append(factorization)
    if self.kernel_regularizer is not None and not backend.IS_KERAS_3:
      # Keras 2 takes a callable loss, evaluated on demand; Keras 3 takes the
      # value, added in `call` (`_recorded`).
      regularizer = self.kernel_regularizer
      self.add_loss(lambda: regularizer(factorization.compose()))
    return factorization

  def _add_bias(self, size, initializer=None):
    """The bias, of `size` entries (or of the shape `size`, a tuple: an `EinsumDense`'s)."""
    if self.use_bias:
      self.bias = self.add_weight(
          name='bias', shape=(size,) if isinstance(size, int) else tuple(size),
          initializer=initializer or self.bias_initializer,
          regularizer=self.bias_regularizer, constraint=self.bias_constraint,
          trainable=not self.adapter)   # an adapter keeps the pretrained bias

  @staticmethod
  def _record(factorization, kernel):
    """Returns `kernel`, composed from `factorization` for a `call`; collected first when a
    recorder is set for that factorization (`keras_layers.jacobian.recording_kernels`)."""
    recorder = _KERNEL_RECORDERS.get(id(factorization))
    if recorder is not None:
      recorder.append(kernel)
    return kernel

  def _recorded(self, kernel, factorization):
    """Returns the `kernel` a `call` uses, composed from `factorization`: recorded
    (`_record`), and its `kernel_regularizer` loss added on Keras 3."""
    self._record(factorization, kernel)
    if self.kernel_regularizer is not None and backend.IS_KERAS_3:
      self.add_loss(self.kernel_regularizer(kernel))
    return kernel

  # -- public queries ------------------------------------------------------

  @property
  def ranks(self):
    """Inner rank of each factorised kernel of this layer (after build)."""
    return [f.rank for f in self.factorizations]

  def labelled_factorizations(self, name=None):
    """`(label, factorization)` per factorised kernel: `(layer name, its kernel's)` for Dense and
    Conv; a cell labels its two kernels `<name>/kernel`, `<name>/recurrent` (`name`: the layer
    answering for it, default its own)."""
    name = name or self.name
    if len(self.factorizations) == 1:
      return [(name, self.factorizations[0])]
    return [(f'{name}/{f.prefix.rstrip("_")}', f) for f in self.factorizations]

  @property
  def local_weights(self):
    """Variables that stay on the client (pFedPara's `*2_local` factors)."""
    return [v for f in self.factorizations for v in f.local_variables]

  @property
  def global_weights(self):
    """Every other weight of the layer: global factors and the bias."""
    local = {id(v) for v in self.local_weights}
    return [v for v in self.weights if id(v) not in local]

  @property
  def base_kernels(self):
    """An adapter's frozen kernels `W0`, one per factorised kernel; [] for other layers."""
    return [f.base for f in self.factorizations if f.base is not None]

  def adapter_param_count(self):
    """Parameters of an adapter's factors (what trains); 0 for other layers."""
    return sum(f.param_count for f in self.factorizations) if self.adapter else 0

  def frozen_param_count(self):
    """Parameters an adapter keeps frozen: its base kernels and bias; 0 for other layers."""
    if not self.adapter:
      return 0
    frozen = self.base_kernels + ([self.bias] if self.bias is not None else [])
    return sum(math.prod(v.shape) for v in frozen)

  def original_param_count(self):
    """Parameters of the plain layer this one replaces (kernels and bias)."""
    count = sum(ranks.original_param_count(f.kernel_shape)
                for f in self.factorizations)
    return count + (math.prod(self.bias.shape) if self.bias is not None else 0)

  def plain_weights(self):
    """Weights of the equivalent plain layer, as numpy arrays.

    Every composed kernel in creation order, then the bias: `[kernel(, bias)]`
    for Dense and Conv, `[kernel, recurrent_kernel(, bias)]` for the LSTM cell,
    the order in which Keras' plain layers hold them.
    """
    weights = [f.compose() for f in self.factorizations]
    weights += [self.bias] if self.bias is not None else []
    return [backend.to_numpy(w) for w in weights]

  def get_config(self):
    config = super().get_config()
    config.update(
        gamma=self.gamma,
        rank=self.rank,
        param_ratio=self.param_ratio,
        nonlinearity=self.nonlinearity,
        factor_init=self.factor_init,
        factor_lr_scale=self.factor_lr_scale,
        activation=keras.activations.serialize(self.activation),
        use_bias=self.use_bias,
        bias_initializer=keras.initializers.serialize(self.bias_initializer),
        kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer),
        bias_regularizer=keras.regularizers.serialize(self.bias_regularizer),
        factor_regularizer=keras.regularizers.serialize(self.factor_regularizer),
        activity_regularizer=keras.regularizers.serialize(self.activity_regularizer),
        factor_constraint=keras.constraints.serialize(self.factor_constraint),
        bias_constraint=keras.constraints.serialize(self.bias_constraint))
    if self.adapter:   # absent otherwise: configs saved before adapters stay as they were
      config.update(adapter=True, adapter_alpha=self.adapter_alpha)
    return config

  @classmethod
  def common_kwargs_from_plain(cls, plain_config):
    """Arguments of this base taken over from a plain layer's config."""
    return {k: plain_config[k] for k in SHARED_PLAIN_ARGS if k in plain_config}

  def common_plain_kwargs(self):
    """Arguments of the equivalent plain Keras layer (for export)."""
    config = self.get_config()
    return {k: config[k] for k in SHARED_PLAIN_ARGS}
