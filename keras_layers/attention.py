"""MultiHeadAttention with factorised projections: FedPara, pFedPara and low-rank.

Keras' `MultiHeadAttention` makes its projections inside itself, as `EinsumDense` layers named
`query`, `key`, `value` and `attention_output` (and, on Keras 3 with `use_gate=True`, `gate`):
when it is built on Keras 3, on its first call on Keras 2. The layers here are that layer with
the projections named in `projections` replaced, as soon as it has made them, by their twins of
`keras_layers.einsum_dense` (same names, equations and bias axes); the others stay plain Keras
layers, frozen when the twins are adapters. `convert` and `add_adapters` replace a model's
`MultiHeadAttention` layers by these (docs/DESIGN.md, "MultiHeadAttention").

>>> layer = FedParaMultiHeadAttention(num_heads=2, key_dim=4, rank=2,
...                                   projections=('query', 'value'))
>>> x = tf.zeros((1, 5, 8))
>>> layer(x, x).shape
TensorShape([1, 5, 8])
>>> layer.ranks
[2, 2]
"""

from typing import Any, List, Optional, Sequence, Tuple

from keras_layers import backend
from keras_layers import einsum_dense
from keras_layers.backend import keras

_register = backend.register

# (projection name, the attribute of Keras' MultiHeadAttention that holds it), in the order the
# layer makes them (its weights come in this order).
_ATTRIBUTES = (('query', '_query_dense'), ('key', '_key_dense'), ('gate', '_gate_dense'),
               ('value', '_value_dense'), ('attention_output', '_output_dense'))
PROJECTIONS = tuple(name for name, _ in _ATTRIBUTES)

# The arguments of the factorised projections (`base.FactorizedLayer`) the attention layer takes
# and hands on to each; every other argument is `MultiHeadAttention`'s.
FACTOR_OPTIONS = ('gamma', 'rank', 'param_ratio', 'nonlinearity', 'factor_init',
                  'factor_lr_scale', 'factor_regularizer', 'factor_constraint', 'adapter',
                  'adapter_alpha')


def projection_layers(layer: Any) -> List[Tuple[str, Any]]:
  """`(name, EinsumDense or its twin)` for each projection `layer` (a `MultiHeadAttention`,
  plain or not) has made, in `PROJECTIONS` order; [] before it has made them."""
  return [(name, getattr(layer, attribute)) for name, attribute in _ATTRIBUTES
          if getattr(layer, attribute, None) is not None]


def _factorized(projection):
  """Whether a projection is a factorised twin (not Keras' plain `EinsumDense`)."""
  return isinstance(projection, einsum_dense.FACTORIZED_TYPES)


def check_projections(projections: Optional[Sequence[str]]) -> Optional[Tuple[str, ...]]:
  """`projections` as a tuple of names (None: every projection the layer makes), each one of
  `PROJECTIONS` and given once; else a ValueError naming the value and what is allowed."""
  if projections is None:
    return None
  if isinstance(projections, str):
    projections = (projections,)
  projections = tuple(projections)
  unknown = [p for p in projections if p not in PROJECTIONS]
  if unknown or not projections or len(set(projections)) != len(projections):
    raise ValueError(f'projections must name distinct projections of MultiHeadAttention, some '
                     f'of {PROJECTIONS}; got {projections!r}.')
  return projections


class _FactorizedMultiHeadAttention(keras.layers.MultiHeadAttention):
  """`MultiHeadAttention` whose `projections` are factorised (module docstring).

  Args:
    num_heads, key_dim, **kwargs: as Keras' `MultiHeadAttention` (`value_dim`, `dropout`,
      `use_bias`, `output_shape`, `attention_axes`, initializers, regularizers, ...), and the
      options of the factorised projections, given to each (`FACTOR_OPTIONS`: `gamma` / `rank`
      / `param_ratio`, `nonlinearity`, `factor_init`, `adapter`, `adapter_alpha`, ...). A
      projection's `rank` and `gamma` mean what they mean for a `Dense` on its kernel's matrix
      (`keras_layers.einsum_layout`: the query's is `(model_dim, num_heads * key_dim)`).
    projections: which projections to factorise, some of `PROJECTIONS`; default every one the
      layer makes.
  """

  twin_class = None   # the `einsum_dense` class of the factorised projections

  def __init__(self, num_heads: int, key_dim: int,
               projections: Optional[Sequence[str]] = None, **kwargs: Any):
    options = {key: kwargs.pop(key) for key in FACTOR_OPTIONS if key in kwargs}
    super().__init__(num_heads, key_dim, **kwargs)
    self.projections = check_projections(projections)
    made = [name for name in PROJECTIONS   # the gate: Keras 3's, with use_gate=True
            if name != 'gate' or getattr(self, '_use_gate', False)]
    missing = [name for name in self.projections or () if name not in made]
    if missing:
      raise ValueError(f'{self.name}: projections names {missing}, which this '
                       f'MultiHeadAttention does not make; it makes {made}.')
    # The options given (None is every option's default but factor_init's, which takes none) as
    # a twin's config holds them (regularizers and constraints serialised): what get_config
    # saves; making the twin checks them now, each bad one in one line.
    probe = self.twin_class('ab,bc->ac', 1, name='options', **options).get_config()
    self._factor_items = tuple((key, probe[key]) for key in FACTOR_OPTIONS
                               if options.get(key) is not None)

  @property
  def factor_options(self) -> dict:
    """The options every factorised projection is made with."""
    return dict(self._factor_items)

  @property
  def adapter(self) -> bool:
    """True when the factorised projections are adapters (the others are then frozen)."""
    return bool(self.factor_options.get('adapter', False))

  # -- the projections -------------------------------------------------------------------------

  def _factorize_projections(self):
    """Replaces the plain projections the parent has just made by their twins (built as they
    were, if they were); freezes the others when the twins are adapters."""
    made = projection_layers(self)
    wanted = self.projections or tuple(name for name, _ in made)
    attributes = dict(_ATTRIBUTES)
    replacements = []
    for name, plain in made:
      layer = plain
      if name in wanted:
        layer = self.twin_class.from_plain(plain, **self.factor_options)
        if plain.built:
          layer.build(plain.get_build_config()['input_shape'])
      elif self.adapter:
        plain.trainable = False
      replacements.append((attributes[name], layer))
    backend.replace_sublayers(self, replacements)

  if backend.IS_KERAS_3:
    def build(self, query_shape, value_shape, key_shape=None):
      super().build(query_shape, value_shape, key_shape)
      self._factorize_projections()
  else:
    def _build_from_signature(self, query, value, key=None):
      super()._build_from_signature(query, value, key)
      self._factorize_projections()

  def factorized_projections(self) -> List[Any]:
    """The factorised projections (twins of `keras_layers.einsum_dense`), in `PROJECTIONS`
    order."""
    return [layer for _, layer in projection_layers(self) if _factorized(layer)]

  # -- the queries of a factorised layer (`conversion.factorized_part`) -----------------------

  @property
  def ranks(self) -> List[int]:
    """Inner rank of each factorised projection (after build)."""
    return [r for layer in self.factorized_projections() for r in layer.ranks]

  @property
  def fit_errors(self) -> Tuple[float, ...]:
    """The warm-start fit errors of the factorised projections (`convert(..., init='fit')`)."""
    return tuple(e for layer in self.factorized_projections()
                 for e in getattr(layer, 'fit_errors', ()))

  def adapter_param_count(self) -> int:
    """Parameters of the adapters' factors (what trains); 0 if not adapters."""
    return sum(layer.adapter_param_count() for layer in self.factorized_projections())

  def frozen_param_count(self) -> int:
    """Parameters that an adapter layer keeps frozen: all but the adapters' factors."""
    return self.count_params() - self.adapter_param_count() if self.adapter else 0

  def original_param_count(self) -> int:
    """Parameters of the plain `MultiHeadAttention` this layer replaces."""
    return sum(layer.original_param_count() if _factorized(layer) else layer.count_params()
               for _, layer in projection_layers(self))

  def plain_weights(self) -> list:
    """The weights of the equivalent plain `MultiHeadAttention`, in its order (numpy): each
    projection's kernel (composed) and bias."""
    return [w for _, layer in projection_layers(self)
            for w in (layer.plain_weights() if _factorized(layer) else layer.get_weights())]

  # -- config ----------------------------------------------------------------------------------

  def get_config(self):
    config = super().get_config()
    config.update(self.factor_options, projections=self.projections)
    return config

  @classmethod
  def from_plain(cls, layer: Any, projections: Optional[Sequence[str]] = None,
                 **options: Any) -> Any:
    """A twin of the plain Keras `MultiHeadAttention` `layer`, its `projections` factorised
    with `options`."""
    return cls.from_config(dict(layer.get_config(), projections=projections, **options))

  def to_plain(self) -> Any:
    """An unbuilt Keras `MultiHeadAttention` with this layer's arguments."""
    config = self.get_config()
    for key in FACTOR_OPTIONS + ('projections',):
      config.pop(key, None)
    return keras.layers.MultiHeadAttention.from_config(config)


@_register
class FedParaMultiHeadAttention(_FactorizedMultiHeadAttention):
  """`MultiHeadAttention` with FedPara projections (`FedParaEinsumDense`); as adapters, LoHa on
  attention."""

  twin_class = einsum_dense.FedParaEinsumDense


@_register
class PFedParaMultiHeadAttention(_FactorizedMultiHeadAttention):
  """`MultiHeadAttention` with pFedPara projections (`PFedParaEinsumDense`: `W1 * (W2 + 1)`,
  `W2` local)."""

  twin_class = einsum_dense.PFedParaEinsumDense


@_register
class LowRankMultiHeadAttention(_FactorizedMultiHeadAttention):
  """`MultiHeadAttention` with low-rank projections (`LowRankEinsumDense`; as adapters,
  LoRA on attention)."""

  twin_class = einsum_dense.LowRankEinsumDense

