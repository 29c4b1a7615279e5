"""Factor-only aggregation with measured communication, for any `tff.learning` builder.

FedPara (Hyeon-Woo, Ye-Bin, Oh, ICLR 2022) sends only the low-rank factors; with
pFedPara the local factors never leave the client. `factor_aggregator` returns a
`tff.aggregators.WeightedAggregationFactory` that

* aggregates exactly the variables that travel (a mask over the model's
  trainable variables; local ones are not sent and come back as zero updates,
  which leaves the server's value unchanged),
* wraps any weighted inner factory (mean, quantization, clipping, zeroing),
* drops client updates that contain NaN or Inf (their weight becomes 0) and
  counts them (`clients/non_finite_clients`); TFF's stock client work already
  zeroes such an update and its weight, so there it arrives as one of the
  `clients/zero_weight_clients` (which also counts clients with no examples),
* reports bytes and element counts per round in its measurements, which the
  learning process exposes under `metrics['aggregator']`.
"""

import collections
from typing import Any, Callable, List, Optional, Sequence
import warnings

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fedpara_tff import communication
from fedpara_tff import models
from fedpara_tff import tff_internals


def travel_mask(keras_model: tf.keras.Model, local_layers: Sequence[str] = (), *,
                require_factorized: bool = True) -> List[bool]:
  """One bool per trainable variable of `keras_model`: True where it is sent.

  pFedPara's `*2_local` factors and every variable of `local_layers` stay on
  the client. The one place that decides what travels: the shared round
  (`fedpara_tff.round_layout.split_variables`) and TFF's builders (`factor_aggregator`)
  both ask it.

  Args:
    keras_model: the Keras model (built or not).
    local_layers: names of layers kept local entirely (FedPer).
    require_factorized: refuse a model without factorised layers (the factor aggregator on
      TFF's builders has nothing to do there; the shared round runs plain models too).

  Raises:
    ValueError: `require_factorized` and the model has no FedPara / pFedPara / low-rank layer.
  """
  import keras_layers  # pylint: disable=g-import-not-at-top
  if require_factorized and not any(keras_layers.is_factorized(layer)
                                    for layer in keras_layers.backend.sublayers(keras_model)):
    raise ValueError(f'model {keras_model.name!r} has no factorised layer (FedParaDense, '
                     f'FedParaConv2D, ...); build it with keras_layers or keras_layers.convert, '
                     f'or call factor_aggregator() without a model to aggregate everything.')
  return [not local for local in keras_layers.local_variable_mask(keras_model, local_layers)]


def _warn_if_quantization_does_nothing(sent, bits, threshold):
  """Warns when no travelling tensor is large enough to be quantized; True if it warned."""
  if bits is None:
    return False
  largest = max((int(np.prod(s.shape)) for s in sent), default=0)
  if largest > threshold:
    return False
  warnings.warn(f'quantization_bits={bits} changes nothing on this model: its largest travelling '
                f'tensor has {largest} elements and only tensors above quantization_threshold='
                f'{threshold} are quantized; lower the threshold.', stacklevel=3)
  return True


def _factories_within(factory):
  """`factory` and the TFF aggregation factories it wraps (attributes, and the closures of its
  `create`, where TFF's robust / DP wrappers keep their inner factory)."""
  kinds = (tff.aggregators.WeightedAggregationFactory, tff.aggregators.UnweightedAggregationFactory)
  seen, stack = [], [factory]
  while stack:
    current = stack.pop()
    if any(current is f for f in seen):
      continue
    seen.append(current)
    found = list(getattr(current, '__dict__', {}).values())
    create = getattr(type(current), 'create', None)
    for cell in getattr(create, '__closure__', None) or ():
      try:
        found.append(cell.cell_contents)
      except ValueError:   # an empty cell
        pass
    stack.extend(f for f in found if isinstance(f, kinds))
  return seen


def encodes(factory: Any) -> bool:
  """True when `factory` contains a TFF `EncodedSumFactory` (quantization and other lossy
  encodings): what it sends then differs from the float32 values it is given."""
  return any(isinstance(f, tff.aggregators.EncodedSumFactory) for f in _factories_within(factory))


# TFF factories that hand their inner factory values of the shapes they are given (means, sums,
# zeroing and clipping): behind only these, an `EncodedSumFactory` encodes the travelling tensors
# themselves, so its encoded structure can be measured from their specs.
_SHAPE_PRESERVING = ('MeanFactory', 'UnweightedMeanFactory', 'SumFactory', 'EncodedSumFactory',
                     'WeightedRobustFactory', 'UnweightedRobustFactory')


def measurable_encoder(factory: Any) -> Optional[Any]:
  """The one `EncodedSumFactory` inside `factory` whose encoded bytes `encoded_bytes` can
  measure (every factory around it keeps shapes), or None."""
  within = _factories_within(factory)
  encoded = [f for f in within if isinstance(f, tff.aggregators.EncodedSumFactory)]
  if len(encoded) != 1 or any(type(f).__name__ not in _SHAPE_PRESERVING for f in within):
    return None
  return encoded[0]


def encoded_bytes(encoded_factory: Any, specs: Sequence[tf.TensorSpec]) -> Optional[int]:
  """Bytes of one client's contribution through TFF's `EncodedSumFactory`, or None.

  Builds the factory's encoder for each `tf.TensorSpec` and traces its `encode` in a scratch
  graph: the client sends the encoded tensors, the encoder's state-update tensors and the
  decode-before-sum parameters TFF routes through the clients (`EncodedSumFactory`'s `encode_fn`
  returns those three). Their static shapes and dtypes give the bytes; None when a shape is
  only known at run time.
  """
  total = 0
  with tf.Graph().as_default():
    for spec in specs:
      encoder = tff_internals.encoder_for(encoded_factory, spec)
      params = encoder.get_params(encoder.initial_state())
      encoded, state_updates = encoder.encode(tf.zeros(spec.shape, spec.dtype), params[0])
      for tensor in tf.nest.flatten((encoded, state_updates, params[1])):
        if not tensor.shape.is_fully_defined():
          return None
        total += tensor.shape.num_elements() * tensor.dtype.size
  return total


def quantized_mean(quantization_bits: int,
                   threshold: int = 20000) -> tff.aggregators.WeightedAggregationFactory:
  """Weighted mean whose sum quantizes tensors above `threshold` elements to `bits`."""
  return tff.aggregators.MeanFactory(
      tff.aggregators.EncodedSumFactory.quantize_above_threshold(
          quantization_bits=quantization_bits, threshold=threshold))


def elements(specs: Sequence[tf.TensorSpec]) -> int:
  """Elements of a list of `tf.TensorSpec`s (what one client uploads, counted)."""
  return int(sum(np.prod(s.shape) for s in specs))


def drop_non_finite(travelling: List[Any], weight: Any):
  """One client's contribution as the factor aggregator takes it: an upload with a NaN or Inf
  becomes zeros of weight 0.

  Returns:
    `(travelling, weight, counts)`, `counts` an `OrderedDict` of int32 `non_finite_clients` (1
    when the upload was dropped) and `zero_weight_clients` (1 when a finite upload weighs <= 0).
  """
  finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in travelling])
  travelling = [tf.where(finite, v, tf.zeros_like(v)) for v in travelling]
  counts = collections.OrderedDict(
      non_finite_clients=tf.cast(tf.logical_not(finite), tf.int32),
      zero_weight_clients=tf.cast(tf.logical_and(finite, weight <= 0), tf.int32))
  return travelling, tf.where(finite, weight, tf.zeros_like(weight)), counts


def communication_figures(clients: Any, bytes_per_client: int, elements_per_client: int,
                          suffix: str = '') -> collections.OrderedDict:
  """The aggregator's `communication` measurements for a round of `clients` (an int32):
  `bytes_uploaded`, `bytes_uploaded_per_client` (each with `suffix`, e.g.
  `'_before_encoding'`), `elements_uploaded_per_client` and `paper_bytes_both_directions`, as
  int64 tensors."""
  clients = tf.cast(clients, tf.int64)
  return collections.OrderedDict([
      ('bytes_uploaded' + suffix, clients * bytes_per_client),
      ('bytes_uploaded_per_client' + suffix, tf.constant(bytes_per_client, tf.int64)),
      ('elements_uploaded_per_client', tf.constant(elements_per_client, tf.int64)),
      ('paper_bytes_both_directions', tf.constant(
          communication.paper_bytes(1, elements_per_client), tf.int64) * clients)])


class FactorAggregatorFactory(tff.aggregators.WeightedAggregationFactory):
  """Aggregates the travelling subset of a model update; see `factor_aggregator`."""

  def __init__(self, inner: Optional[Any] = None, mask: Optional[Sequence[bool]] = None,
               quantization_bits: Optional[int] = None, quantization_threshold: int = 20000,
               inner_encodes: Optional[bool] = None):
    # Bytes are exact for the default mean and for `quantization_bits`, and measured for a TFF
    # `EncodedSumFactory` behind shape-keeping wrappers (`measurable_encoder`); any other inner
    # factory that encodes (detected, or declared with `inner_encodes`) sends bytes not known
    # here, so the upload is reported as what it is: bytes before the inner encoding.
    encodes_inner = bool(inner is not None and (
        encodes(inner) if inner_encodes is None else inner_encodes))
    self._encoder = measurable_encoder(inner) if encodes_inner else None
    self._before_encoding = encodes_inner and self._encoder is None
    if self._before_encoding:
      warnings.warn('factor_aggregator: the inner factory encodes what it sends in a way not '
                    'measured here (an encoder other than TFF\'s EncodedSumFactory behind '
                    'means, sums, zeroing or clipping); the upload is reported as '
                    'bytes_uploaded_before_encoding (float32); use quantization_bits= for '
                    'measured quantized bytes.', stacklevel=3)
    if quantization_bits is not None:
      if inner is not None:
        raise ValueError('give either inner or quantization_bits, not both; '
                         f'got inner={inner!r}, quantization_bits={quantization_bits!r}.')
      if not isinstance(quantization_bits, int) or not 1 <= quantization_bits <= 16:
        raise ValueError(f'quantization_bits must be an integer in [1, 16]; '
                         f'got {quantization_bits!r}.')
      inner = quantized_mean(quantization_bits, quantization_threshold)
    inner = inner or tff.aggregators.MeanFactory()
    if isinstance(inner, tff.aggregators.UnweightedAggregationFactory):
      inner = tff.aggregators.as_weighted_aggregator(inner)  # e.g. DP factories
    if not isinstance(inner, tff.aggregators.WeightedAggregationFactory):
      raise TypeError(f'inner must be a TFF aggregation factory (weighted or unweighted); '
                      f'got {type(inner).__name__}.')
    self._inner = inner
    self._mask = None if mask is None else [bool(m) for m in mask]
    self._bits = quantization_bits
    self._threshold = quantization_threshold
    self._warned = False

  def create(self, value_type, weight_type):
    specs = tff.types.type_to_tf_tensor_specs(value_type)
    if not isinstance(specs, (list, tuple)):
      raise TypeError(f'factor_aggregator expects the list of trainable variables that '
                      f'tff.learning passes; got value type {value_type}.')
    mask = self._mask if self._mask is not None else [True] * len(specs)
    if len(mask) != len(specs):
      raise ValueError(f'the travel mask has {len(mask)} entries but the model update has '
                       f'{len(specs)} tensors; build the mask from the same model.')
    if specs and not any(mask):
      raise ValueError('the travel mask sends nothing; at least one variable must be global.')
    sent = [s for s, m in zip(specs, mask) if m]
    if not self._warned:   # once per factory (TFF may call create more than once)
      self._warned = _warn_if_quantization_does_nothing(sent, self._bits, self._threshold)
    bytes_per_client = communication.structure_bytes(sent, self._bits, self._threshold)
    if self._encoder is not None:
      bytes_per_client = encoded_bytes(self._encoder, sent)
      if bytes_per_client is None:   # an encoded shape known only at run time
        warnings.warn('factor_aggregator: the inner EncodedSumFactory\'s encoded shapes are '
                      'known only at run time; the upload is reported as '
                      'bytes_uploaded_before_encoding (float32).', stacklevel=2)
        self._before_encoding = True
        bytes_per_client = communication.structure_bytes(sent)
    elements_per_client = elements(sent)

    @tff.tensorflow.computation(value_type, weight_type)
    def select(value, weight):
      return drop_non_finite([v for v, m in zip(value, mask) if m], weight)

    sent_type = select.type_signature.result[0]
    inner_process = self._inner.create(sent_type, weight_type)

    # The result keeps the update's container: a list from `VariableModel`s, a tuple from
    # `tff.learning.models.FunctionalModel`s (TFF's builders check the two types are equal).
    container = tuple if isinstance(specs, tuple) else list

    @tff.tensorflow.computation(sent_type)
    def unpack(aggregate):
      values = iter(aggregate)
      return container(next(values) if m else tf.zeros(s.shape, s.dtype)
                       for s, m in zip(specs, mask))

    suffix = '_before_encoding' if self._before_encoding else ''

    @tff.tensorflow.computation(tf.int32)
    def round_figures(clients):
      return communication_figures(clients, bytes_per_client, elements_per_client, suffix)

    @tff.federated_computation(inner_process.initialize.type_signature.result,
                               tff.FederatedType(value_type, tff.CLIENTS),
                               tff.FederatedType(weight_type, tff.CLIENTS))
    def next_fn(state, value, weight):
      sent_value, sent_weight, counts = tff.federated_map(select, (value, weight))
      inner_output = inner_process.next(state, sent_value, sent_weight)
      clients = communication.count_clients()
      figures = tff.federated_map(round_figures, clients)
      measurements = tff.federated_zip(collections.OrderedDict(
          inner=inner_output.measurements,
          communication=figures,
          clients=tff.federated_sum(counts)))
      return tff.templates.MeasuredProcessOutput(
          state=inner_output.state,
          result=tff.federated_map(unpack, inner_output.result),
          measurements=measurements)

    return tff.templates.AggregationProcess(inner_process.initialize, next_fn)


class UnweightedFactorAggregatorFactory(tff.aggregators.UnweightedAggregationFactory):
  """`FactorAggregatorFactory` for the unweighted builders: every client weighs 1.

  Clients whose update is non-finite still get weight 0, so the result is the
  plain mean over the finite clients.
  """

  def __init__(self, weighted_factory: FactorAggregatorFactory):
    self._weighted = weighted_factory

  def create(self, value_type):
    process = self._weighted.create(value_type, tff.TensorType(np.float32))

    @tff.federated_computation(process.initialize.type_signature.result,
                               tff.FederatedType(value_type, tff.CLIENTS))
    def next_fn(state, value):
      return process.next(state, value, tff.federated_value(np.float32(1.0), tff.CLIENTS))

    return tff.templates.AggregationProcess(process.initialize, next_fn)


def factor_aggregator(inner: Optional[Any] = None, *,
                      keras_model_fn: Optional[Callable[[], tf.keras.Model]] = None,
                      local_layers: Sequence[str] = (), mask: Optional[Sequence[bool]] = None,
                      quantization_bits: Optional[int] = None,
                      quantization_threshold: int = 20000, weighted: bool = True,
                      inner_encodes: Optional[bool] = None,
                      aggregation: str = 'factor_mean') -> 'FactorAggregatorFactory':
  """The aggregation factory to pass as `model_aggregator=` to a `tff.learning` builder.

  Args:
    inner: TFF factory applied to the travelling subset (default
      `tff.aggregators.MeanFactory()`); e.g. zeroing/clipping chains. An
      unweighted one (e.g. differential privacy) is wrapped with
      `tff.aggregators.as_weighted_aggregator` and then ignores the weights.
    keras_model_fn: no-argument function returning the (unbuilt or built)
      Keras model of the learning process; its pFedPara local factors and
      `local_layers` are not sent. Without it (and without `mask`) every
      trainable variable is aggregated (a documented pass-through, also for
      models without factor variables).
    local_layers: layer names kept local (FedPer style); needs `keras_model_fn`.
    mask: explicit travel mask (one bool per trainable variable) instead of
      `keras_model_fn`.
    quantization_bits: quantize the travelling tensors above
      `quantization_threshold` elements to this many bits (instead of `inner`).
    quantization_threshold: see `quantization_bits`.
    weighted: False for the unweighted builders (`build_unweighted_fed_avg`,
      `build_unweighted_fed_prox`): returns an unweighted factory.
    inner_encodes: whether `inner` encodes what it sends (None: detected, True
      when it contains a TFF `EncodedSumFactory`). A TFF `EncodedSumFactory`
      behind means, sums, zeroing or clipping (e.g. `tff.learning.compression_aggregator()`)
      is measured: `bytes_uploaded` counts its encoded structure per client
      (`encoded_bytes`). For any other encoding the bytes are unknown here, and
      the upload is reported as `bytes_uploaded_before_encoding` /
      `bytes_uploaded_per_client_before_encoding` (float32 bytes of the values
      given to it) instead of `bytes_uploaded` / `bytes_uploaded_per_client`.
    aggregation: `'factor_mean'` only. The kernel mean (`fedpara_tff.kernel_mean`) composes
      each client's kernels from the server's weights and its update, and TFF's builders give
      their model aggregator the updates alone: it runs on the shared round
      (`build_fedavg_driver(..., aggregation='kernel_mean')`), and is refused here.

  Returns:
    A `FactorAggregatorFactory` (an `UnweightedFactorAggregatorFactory` with
    `weighted=False`). Its measurements: `inner` (the inner
    factory's), `communication` (`bytes_uploaded`, `bytes_uploaded_per_client`,
    `elements_uploaded_per_client`, `paper_bytes_both_directions`) and
    `clients` (`non_finite_clients`, `zero_weight_clients`).

  Raises:
    ValueError: both `keras_model_fn` and `mask`; a model without factorised
      layers; `local_layers` without `keras_model_fn`.
  """
  if aggregation != 'factor_mean':
    raise ValueError(f"aggregation={aggregation!r}: a TFF builder's model aggregator sees the "
                     f"clients' updates but not the server's weights, so it cannot compose their "
                     f"kernels; use fedpara_tff.build_fedavg_driver(..., aggregation="
                     f"'kernel_mean') (the shared round), or 'factor_mean' here.")
  if keras_model_fn is not None and mask is not None:
    raise ValueError('give keras_model_fn or mask, not both.')
  if local_layers and keras_model_fn is None:
    raise ValueError(f'local_layers={list(local_layers)!r} needs keras_model_fn.')
  if keras_model_fn is not None:
    models.check_keras_model_fn(keras_model_fn)
    with tf.Graph().as_default():
      mask = travel_mask(keras_model_fn(), local_layers)
  factory = FactorAggregatorFactory(inner, mask, quantization_bits, quantization_threshold,
                                    inner_encodes)
  return factory if weighted else UnweightedFactorAggregatorFactory(factory)
