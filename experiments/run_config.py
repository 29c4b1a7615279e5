"""A run's settings: `RunConfig` (the training binary's flags), its identity and its checks.

`RunConfig` maps the flags of `python -m experiments.train` one to one and is checked when it is
built: `check` refuses inconsistent settings in one line before anything is loaded or written;
the rules of the round itself (rates, client optimizer, algorithm constants) are
`fedpara_tff.settings.RoundSettings`'s, built once and kept as `RunConfig.settings`; this module
adds the rules that involve the model, the data and the run's machinery. `RunConfig.identity` is
what a restart must repeat to resume.
"""

import dataclasses
import math
import types
from typing import Optional, Tuple

from fedpara_tff import client_store
from fedpara_tff import settings as settings_lib
from fedpara_tff import worker_tls
from keras_layers import factor_options
from keras_layers import validation
from experiments.data import registry

# The model zoo (`experiments.models`) and its parameterisations, by name.
MODELS = ('vgg16', 'vgg_narrow', 'small_cnn', 'mlp', 'lstm')
PARAMETERIZATIONS = ('original', 'lowrank', 'fedpara', 'pfedpara', 'fedper', 'local')
PERSONALIZED = ('pfedpara', 'fedper', 'local')
BACKENDS = ('tff', 'tf')
# Fields of RunConfig that do not change the trajectory of a run; a restart may change them.
# The data itself is identified by its checksum (`data_sha256` in run.json), not by `data_dir`;
# `max_test_examples` picks the evaluation set, so it is part of the identity.
NOT_IN_RUN_IDENTITY = ('rounds', 'eval_every', 'checkpoint_every', 'output_dir', 'overwrite',
                       'progress', 'cache_dir', 'download', 'data_dir',
                       'workers', 'worker_connect_timeout', 'worker_failure_timeout', 'backend',
                       'gpus', 'workers_tls_dir', 'insecure_workers',
                       'pretrained')   # its file's SHA-256 is in the identity (`runner`)
# Fields added after 0.2.0, left out of the identity at their default so that runs written
# before they existed still resume.
IDENTITY_SINCE_0_3 = {'weight_norm': False, 'client_store': 'auto', 'eval_clients': 300,
                      'client_optimizer': 'sgd', 'examples_per_client': 20,
                      'feddyn_alpha': 0.1, 'aggregation': 'factor_mean',
                      'server_beta_2': settings_lib.DEFAULT_SERVER_BETA_2,
                      'adapters': False, 'adapter_alpha': None, 'trainable_layers': ()}


def _integer_in(name, low, high=None):
  """A check that `value` is an integer in [low, high) (high None: unbounded)."""
  def check(value):
    if not validation.is_integer(value, low) or (high is not None and value >= high):
      allowed = f'in [{low}, {high})' if high is not None else f'>= {low}'
      raise ValueError(f'{name} must be an integer {allowed}; got {value!r}.')
    return value
  return check


# The rule of each of the run's own fields (the round's are `RoundSettings.FIELD_CHECKS`), the
# one definition of it: `check` applies them, and so do the training binary's flag validators.
FIELD_CHECKS = {
    'alpha': lambda v: validation.finite_positive(v, 'alpha'),
    'gamma': lambda v: None if v is None else validation.number(v, 'gamma', 0.0, 1.0),
    'rank': lambda v: None if v in (None, 0) else _integer_in('rank', 1)(v),
    'adapter_alpha': lambda v: None if v is None else validation.finite_positive(
        v, 'adapter_alpha'),
    'weight_decay': lambda v: validation.finite_at_least_zero(v, 'weight_decay'),
    'fedprox_mu': lambda v: validation.finite_at_least_zero(v, 'fedprox_mu'),
    'quantization_bits': _integer_in('quantization_bits', 0, 17),
    'clients': _integer_in('clients', 1),
    'clients_per_round': _integer_in('clients_per_round', 1),
    'batch_size': _integer_in('batch_size', 1),
    'rounds': _integer_in('rounds', 1),
    'eval_every': _integer_in('eval_every', 1),
    'checkpoint_every': _integer_in('checkpoint_every', 1),
    'shards_per_client': _integer_in('shards_per_client', 1),
    'examples_per_client': _integer_in('examples_per_client', 1),
    'sequence_length': _integer_in('sequence_length', 1),
    'eval_clients': _integer_in('eval_clients', 0),   # 0: every client
    'max_test_examples': _integer_in('max_test_examples', 0),   # 0: the whole test set
    'client_test_fraction': lambda v: validation.fraction(v, 'client_test_fraction',
                                                          low_closed=False),
    'worker_connect_timeout': lambda v: validation.finite_positive(v, 'worker_connect_timeout'),
    'worker_failure_timeout': lambda v: validation.finite_positive(v, 'worker_failure_timeout'),
    'seed': _integer_in('seed', 0, 2**31),
}


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Every setting of a run, checked when it is built (`check`: a ValueError of one line naming
  the bad value); the training binary's flags map one to one onto it.

  Frozen: `dataclasses.replace(config, rounds=5)` makes a changed copy, checked again. Besides
  its fields it holds `settings`, the round's `fedpara_tff.settings.RoundSettings`, built once.
  `server_learning_rate=None` becomes the algorithm's default, so that run.json records it.
  """
  output_dir: str
  dataset: str = 'mnist5k'
  data_dir: Optional[str] = None
  download: bool = False
  sequence_length: int = 80
  model: str = 'small_cnn'
  parameterization: str = 'fedpara'
  gamma: Optional[float] = 0.1
  rank: Optional[int] = None
  nonlinearity: Optional[str] = None
  factor_init: str = 'matched_glorot'
  factor_lr_scale: Optional[str] = None
  jacobian_correction: float = 0.0
  weight_norm: bool = False
  client_store: str = 'auto'
  client_optimizer: str = 'sgd'
  eval_clients: int = 300
  keep_plain: Tuple[str, ...] = ('logits',)
  local_layers: Tuple[str, ...] = ('logits',)
  algorithm: str = 'fedavg'
  client_learning_rate: float = 0.1
  server_learning_rate: Optional[float] = None   # None: the algorithm's default
  lr_decay: float = 1.0
  client_momentum: float = 0.0
  server_momentum: float = 0.0
  server_beta_2: float = settings_lib.DEFAULT_SERVER_BETA_2
  weight_decay: float = 0.0
  fedprox_mu: float = 0.01
  feddyn_alpha: float = 0.1
  quantization_bits: int = 0
  aggregation: str = 'factor_mean'
  clients: int = 20
  clients_per_round: int = 10
  local_epochs: int = 1
  batch_size: int = 32
  rounds: int = 10
  partition: str = 'iid'
  alpha: float = 0.5
  shards_per_client: int = 2
  examples_per_client: int = 20
  client_test_fraction: float = 0.2
  seed: int = 0
  eval_every: int = 1
  checkpoint_every: int = 1
  overwrite: bool = False
  cache_dir: Optional[str] = None
  max_test_examples: int = 0
  progress: bool = True
  workers: str = ''
  backend: str = 'tff'
  gpus: str = ''
  worker_connect_timeout: float = 20.0
  worker_failure_timeout: float = 10.0
  workers_tls_dir: str = ''
  insecure_workers: bool = False
  pretrained: str = ''
  adapters: bool = False
  adapter_alpha: Optional[float] = None
  trainable_layers: Tuple[str, ...] = ()

  def __post_init__(self):
    if self.server_learning_rate is None:
      object.__setattr__(self, 'server_learning_rate',
                         settings_lib.default_server_learning_rate(self.algorithm))
    for name in ('keep_plain', 'local_layers', 'trainable_layers'):
      if not isinstance(getattr(self, name), tuple):
        object.__setattr__(self, name, tuple(getattr(self, name)))
    object.__setattr__(self, 'settings', check(self))

  def identity(self):
    """The flags a restart must repeat to resume this run (JSON-ready)."""
    fields = dataclasses.asdict(self)
    for key in NOT_IN_RUN_IDENTITY:
      fields.pop(key)
    for key, default in IDENTITY_SINCE_0_3.items():
      if fields[key] == default:
        fields.pop(key)
    if self.algorithm == 'fedprox':
      # FedProx left TFF's builder, whose proximal term had the wrong sign: a FedProx run of
      # 0.2 does not resume on the corrected round.
      fields['fedprox_round'] = 'shared'
    elif (self.algorithm in settings_lib.SERVER_OPTIMIZERS or self.algorithm == 'mimelite'
          or self.client_momentum or self.server_momentum):
      # Adaptive servers, MIME-lite and momentum moved from TFF's builders to the shared round
      # (same equations, another state layout): such a run of 0.2 does not resume.
      fields['round'] = 'shared'
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in fields.items()}


# The fields' defaults, read without building (and so checking) a config: the binaries' flags
# take them as their defaults.
DEFAULTS = types.SimpleNamespace(**{f.name: f.default for f in dataclasses.fields(RunConfig)
                                    if f.default is not dataclasses.MISSING})


def _check_worker_security(config):
  """Remote workers on another host need mutual TLS (--workers_tls_dir) or an explicit
  --insecure_workers; neither flag without --workers."""
  if not config.workers:
    if config.workers_tls_dir or config.insecure_workers:
      raise ValueError('workers_tls_dir / insecure_workers apply to remote workers; give '
                       '--workers too.')
    return
  if config.workers_tls_dir and config.insecure_workers:
    raise ValueError('give --workers_tls_dir (mutual TLS) or --insecure_workers, not both.')
  if config.workers_tls_dir:
    worker_tls.TLSFiles.from_dir(config.workers_tls_dir, 'driver')
    return
  from fedpara_tff import distributed  # pylint: disable=g-import-not-at-top  # loads TFF
  remote = [a for a in distributed.parse_addresses(config.workers)
            if not worker_tls.is_loopback(a)]
  if remote and not config.insecure_workers:
    raise ValueError(f'worker {remote[0]} is not on this host: pass --workers_tls_dir=DIR '
                     f'(mutual TLS; scripts/make_worker_certs.sh makes the files) or '
                     f'--insecure_workers (plain gRPC: whoever reaches a worker runs code on it).')


FACTORIZED = ('fedpara', 'pfedpara', 'lowrank')


def _check_no_ignored_setting(config, settings, lr_scale):
  """Refuses a setting the run would ignore (it would still be frozen into the run's identity)."""
  if config.jacobian_correction and config.parameterization not in FACTORIZED:
    raise ValueError(f'jacobian_correction applies to factorised layers; parameterization='
                     f'{config.parameterization!r} has none.')
  if lr_scale is not None and config.parameterization not in FACTORIZED:
    raise ValueError(f'factor_lr_scale applies to factorised layers (parameterization '
                     f'{", ".join(FACTORIZED)}); parameterization={config.parameterization!r} '
                     f'has none, got factor_lr_scale={config.factor_lr_scale!r}.')
  if config.fedprox_mu != RunConfig.fedprox_mu and config.algorithm != 'fedprox':
    raise ValueError(f'fedprox_mu applies to algorithm=fedprox; got fedprox_mu='
                     f'{config.fedprox_mu!r} with algorithm={config.algorithm!r}.')
  client_store.resolve_kind(config.client_store, config.clients)
  from fedpara_tff import algorithms  # pylint: disable=g-import-not-at-top  # loads TensorFlow
  stateful = (config.parameterization in PERSONALIZED
              or algorithms.build(settings).client_state)
  if config.client_store != 'auto' and not stateful:
    raise ValueError(f'client_store={config.client_store!r} keeps clients\' state between rounds; '
                     f'this run has none (parameterization={config.parameterization!r}, '
                     f'algorithm={config.algorithm!r}): leave client_store=auto.')


def _check_pretrained(config):
  """The pretrained-model settings: adapters need a pretrained model and a factorised delta;
  a pretrained model trains as it is (`original`) or under adapters."""
  if config.adapters and not config.pretrained:
    raise ValueError('adapters=True trains adapters on a pretrained model: give pretrained=PATH '
                     '(the weights of the plain --model).')
  if config.adapters and config.parameterization not in FACTORIZED:
    raise ValueError(f'adapters take their delta from parameterization {", ".join(FACTORIZED)}; '
                     f'got parameterization={config.parameterization!r}.')
  if config.adapters and (config.factor_lr_scale not in (None, 'none', '')
                          or config.jacobian_correction):
    raise ValueError(f'adapters take neither factor_lr_scale nor jacobian_correction (both are '
                     f'derived for a kernel the factors make alone); got factor_lr_scale='
                     f'{config.factor_lr_scale!r}, jacobian_correction='
                     f'{config.jacobian_correction!r}.')
  if config.adapter_alpha is not None and not config.adapters:
    raise ValueError(f'adapter_alpha={config.adapter_alpha!r} scales adapters; add '
                     f'adapters=True or drop it.')
  if config.pretrained and not config.adapters and config.parameterization != 'original':
    raise ValueError(f'pretrained={config.pretrained!r} starts parameterization=original (fine-'
                     f'tuning) or adapters (adapters=True); got parameterization='
                     f'{config.parameterization!r} without adapters.')
  if config.trainable_layers and not config.pretrained:
    raise ValueError(f'trainable_layers={list(config.trainable_layers)} picks what trains of a '
                     f'pretrained model; give pretrained=PATH.')


def _round_settings(config):
  """The round's `fedpara_tff.settings.RoundSettings` of `config`, which checks its fields."""
  return settings_lib.RoundSettings(
      client_learning_rate=config.client_learning_rate,
      server_learning_rate=config.server_learning_rate, local_epochs=config.local_epochs,
      lr_decay=config.lr_decay, client_optimizer=config.client_optimizer,
      client_momentum=config.client_momentum, algorithm=config.algorithm,
      proximal_strength=config.fedprox_mu if config.algorithm == 'fedprox' else 0.0,
      feddyn_alpha=config.feddyn_alpha, num_clients=config.clients,
      server_momentum=config.server_momentum, server_beta_2=config.server_beta_2,
      jacobian_correction=config.jacobian_correction,
      quantization_bits=config.quantization_bits or None, aggregation=config.aggregation)


def check(config):
  """Refuses inconsistent settings with one line naming the bad value; returns the round's
  `RoundSettings`. `RunConfig` runs it when it is built: every rule of a run, in one place."""
  if not isinstance(config.output_dir, str) or not config.output_dir.strip():
    raise ValueError(f'output_dir must name a folder; got {config.output_dir!r}.')
  for name, check_field in FIELD_CHECKS.items():
    check_field(getattr(config, name))
  if config.clients_per_round > config.clients:
    raise ValueError(f'clients_per_round={config.clients_per_round} exceeds '
                     f'clients={config.clients}.')
  settings = _round_settings(config)
  if config.algorithm != 'fedavg' and config.parameterization == 'local':
    raise ValueError(f'algorithm={config.algorithm} acts on the global variables; '
                     f'parameterization=local has none.')
  lr_scale = factor_lr_scale(config.factor_lr_scale)
  factor_options.check_factor_init(config.factor_init)
  _check_no_ignored_setting(config, settings, lr_scale)
  _check_pretrained(config)
  if config.weight_norm and config.model != 'lstm':
    raise ValueError(f'weight_norm applies to the LSTM family (model=lstm); got '
                     f'model={config.model!r}.')
  if config.backend not in BACKENDS:
    raise ValueError(f'backend must be one of {BACKENDS}; got {config.backend!r}.')
  if config.backend == 'tf' and config.workers:
    raise ValueError('backend=tf trains clients in this process; it does not take --workers.')
  _check_worker_security(config)
  if config.gpus and config.backend != 'tf':
    raise ValueError(f'gpus={config.gpus!r} needs backend=tf (TFF 0.87\'s worker has no CUDA).')
  if config.partition == 'natural' and config.dataset not in registry.NATURAL:
    raise ValueError(f'partition=natural needs a naturally federated dataset '
                     f'{registry.NATURAL}; got dataset={config.dataset!r}.')
  if config.model == 'lstm' and config.dataset not in ('shakespeare', 'shakespeare_tff'):
    raise ValueError(f'model=lstm reads character sequences (dataset shakespeare or '
                     f'shakespeare_tff); got dataset={config.dataset!r}.')
  if config.model != 'lstm' and config.dataset in ('shakespeare', 'shakespeare_tff'):
    raise ValueError(f'dataset={config.dataset} is character sequences; use model=lstm, '
                     f'got model={config.model!r}.')
  return settings


def runs_without_local_worker(config) -> Optional[str]:
  """What the run of `config` runs its TFF computations on instead of TFF's local worker, in
  words, or None when it needs that worker: the TF backend runs the whole round in this process
  (unless its aggregation quantizes, a TFF process: `fedpara_tff.in_process_round`), and a run
  on remote workers runs every TFF computation there."""
  if config.backend == 'tf' and not config.quantization_bits:
    return 'the TF backend (--backend=tf)'
  if config.backend == 'tff' and config.workers:
    return 'a run on remote workers (--workers)'
  return None


def factor_lr_scale(value):
  """`--factor_lr_scale` as the layers take it: None, 'matched', 'safe' or a positive float."""
  if value in (None, '', 'none'):
    return None
  if value in ('matched', 'safe'):
    return value
  try:
    number = float(value)
  except ValueError:
    number = float('nan')
  if not (math.isfinite(number) and number > 0):
    raise ValueError(f"factor_lr_scale must be 'none', 'matched', 'safe' or a positive number; "
                     f'got {value!r}.')
  return number


