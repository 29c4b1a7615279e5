"""FedPara learning processes: one builder call over `tff.learning`'s algorithms.

FedPara ("FedPara: Low-Rank Hadamard Product for Communication-Efficient
Federated Learning", ICLR 2022) trains a model of factorised layers with the
usual federated algorithms; what changes is what travels. `build_fedpara_process`
wires a Keras FedPara model into TFF's FedAvg / FedAdam / FedYogi / FedAdagrad /
MIME-lite builders with the factor aggregator (measured upload) and a measured
broadcast (measured download), and a per-round client learning-rate decay.
"""

from typing import Any, Callable, Optional, Sequence

import tensorflow as tf
import tensorflow_federated as tff

from fedpara_tff import aggregators
from fedpara_tff import client_optimizer as client_optimizer_lib
from fedpara_tff import distributors
from fedpara_tff import models
from fedpara_tff import runtime
from fedpara_tff import settings as settings_lib
import keras_layers
from keras_layers import validation


def _server_optimizer(algorithm, server_learning_rate, server_momentum, server_beta_2):
  if algorithm == 'fedadam':
    return tff.learning.optimizers.build_adam(server_learning_rate, beta_2=server_beta_2)
  if algorithm == 'fedyogi':
    return tff.learning.optimizers.build_yogi(server_learning_rate, beta_2=server_beta_2)
  if algorithm == 'fedadagrad':
    return tff.learning.optimizers.build_adagrad(server_learning_rate)
  return tff.learning.optimizers.build_sgdm(server_learning_rate, momentum=server_momentum or None)


def model_weights_type(model_fn):
  """The `ModelWeights` type of a `tff.learning` model, as TFF's builders derive it.

  Args:
    model_fn: a no-argument function returning a `tff.learning.models.VariableModel`,
      or a `tff.learning.models.FunctionalModel` (e.g. from
      `tff.learning.models.functional_model_from_keras`), whose weights are tuples.
  """
  if isinstance(model_fn, tff.learning.models.FunctionalModel):

    @tff.tensorflow.computation
    def initial_weights():
      trainable, non_trainable = model_fn.initial_weights
      return tff.learning.models.ModelWeights(tuple(tf.convert_to_tensor(w) for w in trainable),
                                              tuple(tf.convert_to_tensor(w) for w in non_trainable))

    return initial_weights.type_signature.result
  if not callable(model_fn) or isinstance(model_fn, tf.keras.Model):
    raise TypeError(f'model_fn must be a no-argument function returning a tff.learning '
                    f'VariableModel, or a tff.learning.models.FunctionalModel; got '
                    f'{type(model_fn).__name__}.')
  return tff.learning.models.weights_type_from_model(model_fn)


def build_fedpara_process(
    model_fn: Any, *, algorithm: str = 'fedavg', client_learning_rate: float = 0.1,
    server_learning_rate: Optional[float] = None, client_momentum: float = 0.0,
    server_momentum: float = 0.0, lr_decay: float = 1.0,
    keras_model_fn: Optional[Callable[[], tf.keras.Model]] = None,
    client_optimizer: str = 'sgd', server_beta_2: float = settings_lib.DEFAULT_SERVER_BETA_2,
    local_layers: Sequence[str] = (), aggregator: Optional[Any] = None,
    quantization_bits: Optional[int] = None, quantization_threshold: int = 20000,
    loop_implementation: Any = tff.learning.LoopImplementation.DATASET_ITERATOR,
    client_optimizer_fn: Optional[Any] = None, server_optimizer_fn: Optional[Any] = None,
) -> tff.learning.templates.LearningProcess:
  """Returns a `tff.learning.templates.LearningProcess` training a FedPara model.

  Args:
    model_fn: no-argument function returning a `tff.learning` model (e.g.
      `tff.learning.models.from_keras_model` of a model built with
      `keras_layers`), built inside the function; or a
      `tff.learning.models.FunctionalModel` (TFF's functional path, e.g.
      `tff.learning.models.functional_model_from_keras`; its trainable weights
      are in the Keras model's `trainable_variables` order, so `keras_model_fn`
      gives the travel mask as for a `VariableModel`).
    algorithm: `'fedavg'` (server SGD), `'fedadam'`, `'fedyogi'`, `'fedadagrad'`
      (adaptive server optimizers, Reddi et al. 2021) or `'mimelite'`. `'fedprox'` is
      refused: TFF 0.87's builder pushes clients away from the server model; FedProx
      runs on `fedpara_tff.build_fedavg_driver(proximal_strength=mu)`.
    client_learning_rate: client learning rate at round 0 (> 0).
    server_learning_rate: server optimizer learning rate (> 0); default 1.0 for server SGD
      (plain FedAvg), 0.01 for FedAdam / FedYogi / FedAdagrad
      (`fedpara_tff.settings.default_server_learning_rate`).
    client_momentum, server_momentum: SGD momentum (0 = none); for MIME-lite
      the client momentum is the base optimizer's.
    server_beta_2: second-moment decay of FedAdam / FedYogi's server optimizer
      (in (0, 1); TFF's default 0.999, the FedPara paper's FedAdam 0.99).
    lr_decay: the client learning rate at round r is
      `client_learning_rate * lr_decay**r` (the paper uses 0.992). In (0, 1].
      MIME-lite takes only 1.0 (TFF 0.87 has no schedule for it).
    client_optimizer: `'sgd'` or `'adam'` (`fedpara_tff.client_optimizer`); the
      base optimizer of MIME-lite.
    keras_model_fn: the Keras model of `model_fn`, to find pFedPara / local
      variables that must not travel; see `fedpara_tff.factor_aggregator`.
    local_layers: layer names kept local (needs `keras_model_fn`).
    aggregator: an inner weighted TFF factory for the travelling variables
      (default: mean).
    quantization_bits: quantize travelling tensors (instead of `aggregator`).
    quantization_threshold: only tensors with more elements than this are
      quantized (TFF's `quantize_above_threshold`); a setting under which no
      tensor of the model qualifies warns once.
    loop_implementation: `tff.learning.LoopImplementation` of the client loop.
      Default `DATASET_ITERATOR`: on the round benchmark
      (`benchmarks/tff_round_speed.py`) it ran rounds about 1.7x faster than
      TFF's own default `DATASET_REDUCE`.
    client_optimizer_fn: the clients' optimizer as TFF's builders take it (a
      `tff.learning.optimizers.Optimizer`, e.g. `tff.learning.optimizers.build_sgdm(0.1)`, or a
      no-argument function returning a Keras optimizer), instead of `client_optimizer`,
      `client_learning_rate`, `client_momentum` and `lr_decay` (give one or the other). Not
      with layers built with `factor_lr_scale='safe'`, whose rule depends on the optimizer.
    server_optimizer_fn: the server's optimizer, likewise, instead of the one `algorithm`
      names and `server_learning_rate`, `server_momentum`, `server_beta_2`; with
      `algorithm='fedavg'` or `'mimelite'`.

  While TFF's native local context is current, `fedpara_tff.runtime` is installed first
  (`runtime.install_unless_chosen`, as the drivers do): the process then runs on a local worker
  only this Python process reaches, stopped when it exits.

  Raises:
    ValueError: unknown algorithm, learning rates <= 0, lr_decay outside (0, 1],
      a decay with MIME-lite or a FunctionalModel, algorithm 'fedprox', client Adam on
      layers built with `factor_lr_scale='safe'` (its rule needs the shared round).
    TypeError: `model_fn` is neither a function nor a FunctionalModel.
  """
  validation.one_of(algorithm, 'algorithm', settings_lib.ALGORITHMS)
  _check_optimizer_fns(algorithm, client_optimizer_fn, server_optimizer_fn, dict(
      client_optimizer=(client_optimizer, 'sgd'), client_learning_rate=(client_learning_rate, 0.1),
      client_momentum=(client_momentum, 0.0), lr_decay=(lr_decay, 1.0)), dict(
          server_learning_rate=(server_learning_rate, None),
          server_momentum=(server_momentum, 0.0),
          server_beta_2=(server_beta_2, settings_lib.DEFAULT_SERVER_BETA_2)))
  if algorithm in ('scaffold', 'feddyn'):
    raise ValueError(f'algorithm={algorithm!r} has no TFF 0.87 builder; it runs on '
                     f'fedpara_tff.build_fedavg_driver(..., algorithm={algorithm!r}).')
  if algorithm == 'fedprox':
    raise ValueError("algorithm='fedprox': TFF 0.87's FedProx adds the proximal gradient with the "
                     "wrong sign (docs/DESIGN.md, \"TFF runtime facts\"); use "
                     "fedpara_tff.build_fedavg_driver(..., proximal_strength=mu) instead.")
  # The settings' rules for the shared round's MIME-lite (SGD steps only, server SGD without
  # momentum) are not TFF's: its builder takes any base optimizer and server SGD momentum, so
  # its settings are checked as FedAvg's, whose server step it shares.
  mime = algorithm == 'mimelite'
  settings = settings_lib.RoundSettings(
      client_learning_rate=client_learning_rate, server_learning_rate=server_learning_rate,
      lr_decay=lr_decay, client_optimizer=client_optimizer, client_momentum=client_momentum,
      algorithm='fedavg' if mime else algorithm, server_momentum=server_momentum,
      server_beta_2=server_beta_2)
  if settings.lr_decay != 1 and mime:
    raise ValueError(f'lr_decay={lr_decay!r} is not available with {algorithm!r} in TFF 0.87; '
                     f'use lr_decay=1.0 or fedavg / fedadam / fedyogi.')
  if settings.lr_decay != 1 and isinstance(model_fn, tff.learning.models.FunctionalModel):
    raise ValueError(f'lr_decay={lr_decay!r} is not available with a FunctionalModel: TFF 0.87\'s '
                     f'scheduled FedAvg fails on it (docs/DESIGN.md, "TFF runtime facts"); use '
                     f'lr_decay=1.0 or a VariableModel.')
  mask = None
  if keras_model_fn is not None:
    models.check_keras_model_fn(keras_model_fn)
    with tf.Graph().as_default():
      mask = _checked_travel_mask(keras_model_fn(), local_layers,
                                  'custom' if client_optimizer_fn is not None else client_optimizer)
    local_layers = ()   # in the mask
  client_lr, server_lr = settings.client_learning_rate, settings.server_learning_rate
  runtime.install_unless_chosen()   # before model_weights_type runs a computation

  factory = aggregators.factor_aggregator(
      inner=aggregator, mask=mask, local_layers=local_layers,
      quantization_bits=quantization_bits, quantization_threshold=quantization_threshold)
  weights_type = model_weights_type(model_fn)
  models.check_no_non_trainable(len(weights_type.non_trainable))
  distributor = distributors.build_measured_broadcast(weights_type)
  server_optimizer = server_optimizer_fn or _server_optimizer(algorithm, server_lr,
                                                             server_momentum, server_beta_2)
  client_opt = client_optimizer_fn or client_optimizer_lib.tff_optimizer(
      client_optimizer, client_lr, client_momentum)
  common = dict(model_distributor=distributor, model_aggregator=factory,
                loop_implementation=loop_implementation)

  if algorithm == 'mimelite':
    return tff.learning.algorithms.build_weighted_mime_lite(
        model_fn, base_optimizer=client_opt, server_optimizer=server_optimizer, **common)
  if lr_decay == 1:
    return tff.learning.algorithms.build_weighted_fed_avg(
        model_fn, client_optimizer_fn=client_opt, server_optimizer_fn=server_optimizer, **common)
  return tff.learning.algorithms.build_weighted_fed_avg_with_optimizer_schedule(
      model_fn,
      client_learning_rate_fn=settings.learning_rate_at,
      client_optimizer_fn=lambda lr: client_optimizer_lib.tff_optimizer(
          client_optimizer, lr, client_momentum),
      server_optimizer_fn=server_optimizer, **common)


def _check_optimizer_fns(algorithm, client_optimizer_fn, server_optimizer_fn, client_args,
                         server_args):
  """`client_optimizer_fn` / `server_optimizer_fn`: TFF optimizers (or functions making Keras
  ones), each given instead of its side's named arguments (`{name: (value, default)}`)."""
  for name, given, named in (('client_optimizer_fn', client_optimizer_fn, client_args),
                             ('server_optimizer_fn', server_optimizer_fn, server_args)):
    if given is None:
      continue
    if not (isinstance(given, tff.learning.optimizers.Optimizer) or callable(given)):
      raise TypeError(f'{name} must be a tff.learning.optimizers.Optimizer or a function '
                      f'returning a Keras optimizer; got {type(given).__name__}.')
    changed = sorted(k for k, (value, default) in named.items() if value != default)
    if changed:
      raise ValueError(f'give {name} or {", ".join(changed)}, not both: {name} replaces them.')
  if server_optimizer_fn is not None and algorithm not in ('fedavg', 'mimelite'):
    raise ValueError(f'algorithm={algorithm!r} names its own server optimizer; give '
                     f'server_optimizer_fn with algorithm=\'fedavg\' (or \'mimelite\').')


def _checked_travel_mask(keras_model, local_layers, client_optimizer):
  """`aggregators.travel_mask` of `keras_model`, after the client-optimizer check: the one model
  `build_fedpara_process` builds for both (`client_optimizer` 'custom': `client_optimizer_fn`)."""
  if client_optimizer == 'adam':
    _check_no_sign_rule(keras_model)
  if client_optimizer == 'custom' and keras_layers.sign_rule.rule_factorizations(keras_model):
    raise ValueError("the model's layers use factor_lr_scale='safe', whose rule depends on the "
                     "client optimizer; give client_optimizer='sgd' or 'adam' instead of "
                     "client_optimizer_fn.")
  return aggregators.travel_mask(keras_model, local_layers)


def _check_no_sign_rule(keras_model):
  """TFF's client Adam cannot scale its update per kernel (`keras_layers.sign_rule`)."""
  if keras_layers.sign_rule.rule_factorizations(keras_model):
    raise ValueError("the model's layers use factor_lr_scale='safe', whose rule under client "
                     "Adam scales the optimizer's update, which TFF 0.87's Adam cannot; run it "
                     "on fedpara_tff.build_fedavg_driver, or use client_optimizer='sgd'.")


def build_evaluation(model_fn: Any) -> tff.learning.templates.LearningProcess:
  """TFF's federated evaluation of `model_fn` (`tff.learning.algorithms.build_fed_eval`)."""
  return tff.learning.algorithms.build_fed_eval(model_fn)
