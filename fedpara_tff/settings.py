"""The settings of a federated round, validated once: `RoundSettings`.

Every entry point that runs a round (the drivers of `fedpara_tff.personalization`, the TFF-builder
processes of `fedpara_tff.processes`, the training binary through `experiments.run_config`)
builds one `RoundSettings`; its construction checks each rule of the round, and each rule is
written here only. What a round does with the settings: `fedpara_tff.algorithms.build`
(the algorithm's equations), `client_optimizer` (the client step) and `learning_rate_at` (the
one learning-rate schedule).
"""

import dataclasses
from typing import Optional

from fedpara_tff import choices
from keras_layers import validation

# The names (`fedpara_tff.choices`), by their names here too.
ALGORITHMS = choices.ALGORITHMS
SHARED_ROUND_ALGORITHMS = choices.SHARED_ROUND_ALGORITHMS
SERVER_OPTIMIZERS = choices.SERVER_OPTIMIZERS
SERVER_OPTIMIZER_NAMES = choices.SERVER_OPTIMIZER_NAMES
DEFAULT_SERVER_BETA_2 = choices.DEFAULT_SERVER_BETA_2
SGD_CORRECTING = choices.SGD_CORRECTING
AGGREGATIONS = choices.AGGREGATIONS


# The server learning rate an algorithm gets when none is given: 1.0 is FedAvg's averaging step;
# an adaptive server optimizer normalises its step, so 1.0 moves every weight by about 1 per
# round and diverges: the paper's FedAdam uses 0.01.
ADAPTIVE_SERVER_LEARNING_RATE = 0.01


# The rule of each field on its own, the one definition of it: `RoundSettings` applies them, and
# so do the training binary's flag validators (the rules that combine fields are
# `RoundSettings.__post_init__`'s). Each returns the value as stored, or raises a one-line
# ValueError naming the field, what is allowed and the value.
FIELD_CHECKS = {
    'client_learning_rate': lambda v: validation.finite_positive(v, 'client_learning_rate'),
    'server_learning_rate': lambda v: None if v is None else validation.finite_positive(
        v, 'server_learning_rate'),
    'local_epochs': lambda v: validation.integer(v, 'local_epochs'),
    'lr_decay': lambda v: validation.fraction(v, 'lr_decay', low_closed=False, high_closed=True),
    'client_momentum': lambda v: validation.fraction(v, 'client_momentum'),
    'proximal_strength': lambda v: validation.finite_at_least_zero(v, 'proximal_strength'),
    'feddyn_alpha': lambda v: validation.finite_positive(v, 'feddyn_alpha'),
    'server_momentum': lambda v: validation.fraction(v, 'server_momentum'),
    'server_beta_2': lambda v: validation.number(v, 'server_beta_2', 0.0, 1.0,
                                                 low_closed=False, high_closed=False),
    'jacobian_correction': lambda v: validation.finite_at_least_zero(v, 'jacobian_correction'),
}


def default_server_learning_rate(algorithm: str, server_optimizer: Optional[str] = None) -> float:
  """The server learning rate of `algorithm` with `server_optimizer` ('sgd', 'adam', 'yogi',
  'adagrad'; None: the algorithm's own, `SERVER_OPTIMIZERS`, else 'sgd')."""
  optimizer = server_optimizer or SERVER_OPTIMIZERS.get(algorithm, 'sgd')
  return 1.0 if optimizer == 'sgd' else ADAPTIVE_SERVER_LEARNING_RATE


@dataclasses.dataclass(frozen=True)
class RoundSettings:
  """How clients train and the server steps, for every algorithm of the shared round.

  Attributes:
    client_learning_rate: the client learning rate at round 0 (> 0).
    server_learning_rate: the server optimizer's learning rate (> 0). Default
      (`default_server_learning_rate`): 1.0 with server SGD (plain FedAvg), 0.01 with server
      Adam, Yogi or Adagrad (the paper's FedAdam; 1.0 diverges there).
    local_epochs: passes over each client's data per round (an integer >= 1).
    lr_decay: the client learning rate at round r (from 0) is
      `client_learning_rate * lr_decay**r`; in (0, 1].
    client_optimizer: `'sgd'` or `'adam'` (`fedpara_tff.client_optimizer`).
    client_momentum: client SGD momentum in [0, 1) (0: none); with `'mimelite'`, MIME's
      momentum `beta`, whose accumulator is the server's.
    algorithm: one of `ALGORITHMS`. `'fedadam'`, `'fedyogi'` and `'fedadagrad'` are FedAvg
      with that server optimizer; `'fedprox'` is FedAvg with `proximal_strength` > 0.
    proximal_strength: FedProx's mu on the global variables (>= 0; > 0 with `'fedavg'`
      means FedProx).
    feddyn_alpha: FedDyn's alpha (a finite number > 0).
    num_clients: all clients, N (SCAFFOLD and FedDyn; an integer >= 1 there).
    server_optimizer: `'sgd'`, `'adam'`, `'yogi'` or `'adagrad'` for FedAvg / FedProx; None
      (default): the algorithm's own (`SERVER_OPTIMIZERS`, else SGD).
    server_momentum: server SGD momentum in [0, 1).
    server_beta_2: second-moment decay of server Adam / Yogi, in (0, 1) (TFF's default
      0.999; the FedPara paper's FedAdam runs use 0.99).
    jacobian_correction: lambda of the Jacobian correction on the factorised layers (a
      finite number >= 0; 0 off); it needs plain client SGD steps.
    quantization_bits: quantize the uploaded global updates to this many bits (None: off;
      `fedpara_tff.aggregators.FactorAggregatorFactory` checks it).
    aggregation: `'factor_mean'` (FedAvg's mean of each factor) or `'kernel_mean'` (each
      factorised kernel's factors refitted to the mean of the clients' kernels,
      `fedpara_tff.kernel_mean`; it needs each client's factors at the aggregator, so no
      quantization).
  """
  client_learning_rate: float = 0.1
  server_learning_rate: Optional[float] = None
  local_epochs: int = 1
  lr_decay: float = 1.0
  client_optimizer: str = 'sgd'
  client_momentum: float = 0.0
  algorithm: str = 'fedavg'
  proximal_strength: float = 0.0
  feddyn_alpha: float = 0.1
  num_clients: Optional[int] = None
  server_optimizer: Optional[str] = None
  server_momentum: float = 0.0
  server_beta_2: float = DEFAULT_SERVER_BETA_2
  jacobian_correction: float = 0.0
  quantization_bits: Optional[int] = None
  aggregation: str = 'factor_mean'

  def __post_init__(self):
    set_ = lambda name, value: object.__setattr__(self, name, value)
    for name, check in FIELD_CHECKS.items():
      set_(name, check(getattr(self, name)))
    choices.check_client_optimizer(self.client_optimizer, self.client_momentum)
    validation.one_of(self.algorithm, 'algorithm', ALGORITHMS)
    set_('server_optimizer', self._server_optimizer())
    if self.server_learning_rate is None:
      set_('server_learning_rate', default_server_learning_rate(self.algorithm,
                                                                self.server_optimizer))
    validation.one_of(self.aggregation, 'aggregation', AGGREGATIONS)
    if self.aggregation == 'kernel_mean' and self.quantization_bits is not None:
      raise ValueError(f"aggregation='kernel_mean' needs each client's factors at the "
                       f'aggregator; quantization_bits={self.quantization_bits} encodes them '
                       f'(use one or the other).')
    self._check_algorithm()
    self._check_client_step()

  def _server_optimizer(self):
    named = SERVER_OPTIMIZERS.get(self.algorithm)
    if self.server_optimizer is None:
      return named or 'sgd'
    validation.one_of(self.server_optimizer, 'server_optimizer', SERVER_OPTIMIZER_NAMES)
    if named and self.server_optimizer != named:
      raise ValueError(f'algorithm={self.algorithm} steps the server with {named!r}; got '
                       f'server_optimizer={self.server_optimizer!r}.')
    if self.server_optimizer != 'sgd' and self.base_algorithm not in ('fedavg', 'fedprox'):
      raise ValueError(f'algorithm={self.algorithm} takes server SGD without momentum (its '
                       f'paper\'s server step); got server_optimizer={self.server_optimizer!r}.')
    return self.server_optimizer

  def _check_algorithm(self):
    algorithm = self.algorithm
    if self.server_beta_2 != DEFAULT_SERVER_BETA_2 and self.server_optimizer not in ('adam',
                                                                                     'yogi'):
      raise ValueError(f'server_beta_2={self.server_beta_2} applies to fedadam or fedyogi; got '
                       f'algorithm={algorithm}, server_optimizer={self.server_optimizer!r}.')
    if self.server_momentum and self.server_optimizer != 'sgd':
      raise ValueError(f'server_momentum={self.server_momentum} applies to server SGD; '
                       f'algorithm={algorithm} has its own moments '
                       f'(server_optimizer={self.server_optimizer!r}).')
    if algorithm in ('scaffold', 'feddyn') and (self.client_momentum or self.server_momentum):
      raise ValueError(f'algorithm={algorithm} runs without momentum; got client_momentum='
                       f'{self.client_momentum}, server_momentum={self.server_momentum}.')
    if algorithm == 'mimelite' and self.server_momentum:
      raise ValueError(f'algorithm=mimelite takes server SGD without momentum; got '
                       f'server_momentum={self.server_momentum}.')
    if algorithm == 'fedprox' and not self.proximal_strength:
      raise ValueError(f'algorithm=fedprox needs proximal_strength > 0; got '
                       f'{self.proximal_strength!r}.')
    if self.proximal_strength and self.base_algorithm not in ('fedavg', 'fedprox'):
      raise ValueError(f'proximal_strength={self.proximal_strength} is FedProx\'s; '
                       f'algorithm={algorithm} takes none.')
    if algorithm in ('scaffold', 'feddyn') and not validation.is_integer(self.num_clients, 1):
      raise ValueError(f'{algorithm.upper() if algorithm == "scaffold" else "FedDyn"} needs '
                       f'num_clients (all clients, N) as an integer >= 1; got '
                       f'{self.num_clients!r}.')

  def _check_client_step(self):
    if self.algorithm in SGD_CORRECTING and self.client_optimizer != 'sgd':
      raise ValueError(f'algorithm={self.algorithm} corrects SGD steps; got client_optimizer='
                       f'{self.client_optimizer!r}.')
    if self.jacobian_correction and self.client_optimizer != 'sgd':
      raise ValueError(f'jacobian_correction={self.jacobian_correction} assumes an SGD client '
                       f'step; got client_optimizer={self.client_optimizer!r}.')
    if self.jacobian_correction and (self.algorithm == 'mimelite' or self.client_momentum):
      raise ValueError(f'jacobian_correction={self.jacobian_correction} needs plain client SGD '
                       f'steps (not MIME-lite, no client momentum); got '
                       f'algorithm={self.algorithm!r}, client_momentum={self.client_momentum}.')

  @property
  def base_algorithm(self):
    """The shared round's algorithm (`fedpara_tff.algorithms.NAMES`): FedAdam, FedYogi and
    FedAdagrad are FedAvg with their server optimizer; FedAvg with a proximal term is FedProx."""
    if self.algorithm in SERVER_OPTIMIZERS or self.algorithm == 'fedavg':
      return 'fedprox' if self.proximal_strength else 'fedavg'
    return self.algorithm

  @property
  def local_momentum(self):
    """The client optimizer's own momentum: MIME-lite's is the server's accumulator instead."""
    return 0.0 if self.algorithm == 'mimelite' else self.client_momentum

  def learning_rate_at(self, round_num):
    """The client learning rate of round `round_num` (from 0, a TF integer), as a float32 tensor:
    `client_learning_rate * lr_decay**round_num`."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  # settings load without TF
    return self.client_learning_rate * tf.pow(tf.constant(self.lr_decay, tf.float32),
                                              tf.cast(round_num, tf.float32))

  def replace(self, **changes):
    """A copy with `changes`, validated again."""
    return dataclasses.replace(self, **changes)
