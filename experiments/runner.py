"""One federated experiment, end to end: data, clients, model, process, rounds, outputs.

`run(config)` is what `python -m experiments.train` executes. Everything that
can be refused (flags, data, partition, model options, output folder) is
checked before the output folder is touched. Rounds are deterministic given
the seed (initial weights, client sampling and each client's shuffling), so a
run killed after round k and restarted continues at round k + 1 from its
latest checkpoint and ends where an uninterrupted run ends.
"""

import collections
import dataclasses
import functools
import math
import os
import sys
import time
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf
import tqdm

import fedpara_tff
from fedpara_tff import client_optimizer
from fedpara_tff import client_store
from fedpara_tff import client_work
from fedpara_tff import runtime
from fedpara_tff import distributed
from fedpara_tff import processes
from fedpara_tff import tf_backend
import keras_layers
from experiments import checkpoints
from experiments import models
from experiments import plot
from experiments import run_io
from experiments.data import clients as clients_lib
from experiments.data import registry

PERSONALIZED = ('pfedpara', 'fedper', 'local')
BACKENDS = ('tff', 'tf')
# Fields of RunConfig that do not change the trajectory of a run; a restart may change them.
# The data itself is identified by its checksum (`data_sha256` in run.json), not by `data_dir`;
# `max_test_examples` picks the evaluation set, so it is part of the identity.
NOT_IN_RUN_IDENTITY = ('rounds', 'eval_every', 'checkpoint_every', 'output_dir', 'overwrite',
                       'progress', 'cache_dir', 'download', 'data_dir',
                       'workers', 'worker_connect_timeout', 'worker_failure_timeout', 'backend',
                       'gpus')
# Fields added after 0.2.0, left out of the identity at their default so that runs written
# before they existed still resume.
IDENTITY_SINCE_0_3 = {'weight_norm': False, 'client_store': 'auto', 'eval_clients': 300,
                      'client_optimizer': 'sgd', 'examples_per_client': 20,
                      'feddyn_alpha': 0.1,
                      'server_beta_2': processes.DEFAULT_SERVER_BETA_2}


class RunInterruptedError(RuntimeError):
  """The run stopped mid-way (e.g. a worker died); its last checkpoint is kept."""


class RunDivergedError(RunInterruptedError):
  """Training diverged: no client's update was finite, or the model or test loss is not finite."""


def divergence(row, clients, weights):
  """What diverged in a round, in words, or None when the round is sound.

  Args:
    row: the round's metrics (`diverged_clients`, optional `test_loss`).
    clients: the round's client count.
    weights: the global model's variables after the round (numpy arrays).
  """
  if row['diverged_clients'] >= clients:
    return f'every client\'s update was non-finite ({clients} of {clients} clients)'
  bad = [i for i, w in enumerate(weights) if not np.all(np.isfinite(w))]
  if bad:
    return f'the server model has non-finite values (variable {bad[0]} of {len(weights)})'
  if 'test_loss' in row and not math.isfinite(row['test_loss']):
    return f'the test loss is {row["test_loss"]}'
  return None


@dataclasses.dataclass
class RunConfig:
  """Every setting of a run; the training binary's flags map one to one onto it."""
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
  server_learning_rate: float = 1.0
  lr_decay: float = 1.0
  client_momentum: float = 0.0
  server_momentum: float = 0.0
  server_beta_2: float = processes.DEFAULT_SERVER_BETA_2
  weight_decay: float = 0.0
  fedprox_mu: float = 0.01
  feddyn_alpha: float = 0.1
  quantization_bits: int = 0
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
    elif (self.algorithm in fedpara_tff.SERVER_OPTIMIZERS or self.algorithm == 'mimelite'
          or self.client_momentum or self.server_momentum):
      # Adaptive servers, MIME-lite and momentum moved from TFF's builders to the shared round
      # (same equations, another state layout): such a run of 0.2 does not resume.
      fields['round'] = 'shared'
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in fields.items()}


def check(config):
  """Refuses inconsistent settings with one line naming the bad value."""
  if config.clients_per_round > config.clients:
    raise ValueError(f'clients_per_round={config.clients_per_round} exceeds '
                     f'clients={config.clients}.')
  if config.algorithm in ('scaffold', 'feddyn') and (config.client_momentum
                                                     or config.server_momentum):
    raise ValueError(f'algorithm={config.algorithm} runs without momentum; got client_momentum='
                     f'{config.client_momentum}, server_momentum={config.server_momentum}.')
  processes.check_server_beta_2(
      config.server_beta_2, config.algorithm in ('fedadam', 'fedyogi'),
      f'fedadam or fedyogi; got algorithm={config.algorithm}')
  if config.algorithm in fedpara_tff.SERVER_OPTIMIZERS and config.server_momentum:
    raise ValueError(f'server_momentum={config.server_momentum} applies to server SGD; '
                     f'algorithm={config.algorithm} has its own moments.')
  if config.algorithm != 'fedavg' and config.parameterization == 'local':
    raise ValueError(f'algorithm={config.algorithm} acts on the global variables; '
                     f'parameterization=local has none.')
  if config.algorithm == 'mimelite' and config.server_momentum:
    raise ValueError(f'algorithm=mimelite takes server SGD without momentum; got '
                     f'server_momentum={config.server_momentum}.')
  if (config.algorithm in ('scaffold', 'feddyn', 'mimelite')
      and config.client_optimizer != 'sgd'):
    raise ValueError(f'algorithm={config.algorithm} corrects SGD steps; got client_optimizer='
                     f'{config.client_optimizer!r}.')
  if not (config.feddyn_alpha > 0 and math.isfinite(config.feddyn_alpha)):
    raise ValueError(f'feddyn_alpha must be a finite number > 0; got {config.feddyn_alpha!r}.')
  _lr_scale(config.factor_lr_scale)
  if not 0 <= config.seed < 2**31:
    raise ValueError(f'seed must be in [0, 2**31); got {config.seed!r}.')
  for name in ('worker_connect_timeout', 'worker_failure_timeout'):
    value = getattr(config, name)
    if not (isinstance(value, (int, float)) and 0 < value < math.inf):
      raise ValueError(f'{name} must be a finite number > 0; got {value!r}.')
  if config.factor_init not in keras_layers.factors.FACTOR_INITS:
    raise ValueError(f'factor_init must be one of {keras_layers.factors.FACTOR_INITS}; got '
                     f'{config.factor_init!r}.')
  if not (config.jacobian_correction >= 0 and math.isfinite(config.jacobian_correction)):
    raise ValueError(f'jacobian_correction must be a finite number >= 0; got '
                     f'{config.jacobian_correction!r}.')
  if config.jacobian_correction and (config.algorithm == 'mimelite' or config.client_momentum):
    raise ValueError(f'jacobian_correction={config.jacobian_correction} needs plain client SGD '
                     f'steps (not MIME-lite, no client momentum); got '
                     f'algorithm={config.algorithm!r}, client_momentum={config.client_momentum}.')
  if config.jacobian_correction and config.parameterization not in ('fedpara', 'pfedpara',
                                                                     'lowrank'):
    raise ValueError(f'jacobian_correction applies to factorised layers; parameterization='
                     f'{config.parameterization!r} has none.')
  client_store.resolve_kind(config.client_store, config.clients)
  client_optimizer.check(config.client_optimizer)
  if config.client_optimizer != 'sgd' and config.jacobian_correction:
    raise ValueError(f'jacobian_correction={config.jacobian_correction} assumes an SGD client '
                     f'step; got client_optimizer={config.client_optimizer!r}.')
  if config.client_optimizer != 'sgd' and _lr_scale(config.factor_lr_scale) == 'safe':
    raise ValueError(f"factor_lr_scale='safe' rescales SGD gradients, which Adam's per-coordinate "
                     f'normalisation undoes; use it with client_optimizer=sgd, got '
                     f'client_optimizer={config.client_optimizer!r}.')
  if config.client_optimizer != 'sgd' and config.client_momentum:
    raise ValueError(f'client_momentum={config.client_momentum} applies to SGD; got '
                     f'client_optimizer={config.client_optimizer!r}.')
  if not isinstance(config.eval_clients, int) or config.eval_clients < 0:
    raise ValueError(f'eval_clients must be an integer >= 0 (0: every client); got '
                     f'{config.eval_clients!r}.')
  if config.weight_norm and config.model != 'lstm':
    raise ValueError(f'weight_norm applies to the LSTM family (model=lstm); got '
                     f'model={config.model!r}.')
  if config.backend not in BACKENDS:
    raise ValueError(f'backend must be one of {BACKENDS}; got {config.backend!r}.')
  if config.backend == 'tf' and config.workers:
    raise ValueError('backend=tf trains clients in this process; it does not take --workers.')
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


def _lr_scale(value):
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


def _element_spec(data):
  return collections.OrderedDict(
      x=tf.TensorSpec((None,) + data.x_train.shape[1:], tf.as_dtype(data.x_train.dtype)),
      y=tf.TensorSpec((None,) + data.y_train.shape[1:], tf.int32))


class _Process:
  """`fedpara_tff`'s own round, for every algorithm and parameterisation (FedPara / low-rank /
  original, pFedPara, FedPer, local-only), on the TFF runtime (`backend=tff`, `--workers`) or with
  in-process TensorFlow client training (`backend=tf`, `--gpus`)."""

  def __init__(self, config, keras_model_fn, element_spec):
    options = dict(client_learning_rate=config.client_learning_rate,
                   server_learning_rate=config.server_learning_rate,
                   local_epochs=config.local_epochs, lr_decay=config.lr_decay,
                   quantization_bits=config.quantization_bits or None,
                   jacobian_correction=config.jacobian_correction,
                   client_optimizer=config.client_optimizer,
                   algorithm=('fedavg' if config.algorithm in fedpara_tff.SERVER_OPTIMIZERS
                              else config.algorithm),
                   server_optimizer=fedpara_tff.SERVER_OPTIMIZERS.get(config.algorithm, 'sgd'),
                   server_momentum=config.server_momentum, server_beta_2=config.server_beta_2,
                   client_momentum=config.client_momentum, num_clients=config.clients,
                   feddyn_alpha=config.feddyn_alpha,
                   proximal_strength=config.fedprox_mu if config.algorithm == 'fedprox' else 0.0)
    if config.parameterization == 'pfedpara':
      self.trainer = fedpara_tff.build_pfedpara_driver(keras_model_fn, element_spec, **options)
    elif config.parameterization == 'fedper':
      self.trainer = fedpara_tff.build_fedper_driver(
          keras_model_fn, element_spec, local_layers=list(config.local_layers), **options)
    elif config.parameterization == 'local':
      self.trainer = fedpara_tff.build_local_only_driver(keras_model_fn, element_spec,
                                                          **options)
    else:
      self.trainer = fedpara_tff.build_fedavg_driver(keras_model_fn, element_spec, **options)
    if config.backend == 'tf':
      devices, note = tf_backend.resolve_devices(config.gpus)
      if note:
        print(note, file=sys.stderr, flush=True)
      # On the CPU fallback, one client per core at a time keeps both cores busy.
      parallel = (os.cpu_count() or 1) if note else 1
      self.trainer = tf_backend.TFBackend(self.trainer, devices, parallel_per_device=parallel)

  @property
  def local_layout(self):
    return self.trainer.local_layout

  def use_store(self, store):
    self.trainer.use_store(store)

  def initialize(self, weights):
    return self.trainer.initialize(weights)

  def next(self, state, client_ids, datasets):
    state, metrics = self.trainer.next(state, client_ids, datasets)
    communication = metrics['aggregator']['communication']
    return state, dict(
        train_loss=float(metrics['train']['loss']),
        train_accuracy=float(metrics['train']['accuracy']),
        diverged_clients=int(metrics['train']['diverged_clients']),
        bytes_uploaded=int(communication['bytes_uploaded']),
        bytes_downloaded=int(metrics['train']['bytes_downloaded']))

  def global_weights(self, state):
    return state['global_weights']  # every variable, in order, when none is local

  def evaluate(self, state, client_ids, datasets):
    results = self.trainer.evaluate(state, client_ids, datasets)
    total = sum(r['num_examples'] for r in results)
    return sum(r['accuracy'] * r['num_examples'] for r in results) / total


def _shuffle_seed(seed, round_num, client):
  return int((seed * 1_000_003 + round_num * 10_007 + client) % (2**31 - 1))


def sample_clients(seed, round_num, clients, per_round):
  """The clients of round `round_num` (1-based): a pure function of the seed and the round."""
  rng = np.random.default_rng([seed, round_num])
  return np.sort(rng.choice(clients, size=per_round, replace=False))


def sample_eval_clients(seed, ids, count):
  """The clients of the personalised evaluation: every one (`count` 0 or >= len(ids)), or a
  seeded sample of `count`, the same at every evaluation of the run."""
  if not count or count >= len(ids):
    return list(ids)
  chosen = np.random.default_rng([seed, 7_919]).choice(len(ids), size=count, replace=False)
  return [ids[i] for i in np.sort(chosen)]


class _Evaluator:
  """Loss and accuracy of the global model on the held-out pool (global runs only)."""

  def __init__(self, keras_model_fn, x, y, max_examples):
    if max_examples:
      x, y = x[:max_examples], y[:max_examples]
    self._model = keras_model_fn()
    self._dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(256)
    loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction='sum')
    model = self._model

    def add_batch(totals, batch):
      batch_x, batch_y = batch
      logits = model(batch_x, training=False)
      correct, total = client_work.correct_and_total(logits, batch_y)
      return (totals[0] + loss(batch_y, logits), totals[1] + correct, totals[2] + total)

    # `Dataset.reduce`, not a Python loop: the loop needs AutoGraph, which reads the source file
    # again and silently falls back to an endless graph-mode loop if it was edited meanwhile.
    @tf.function(autograph=False)
    def evaluate():
      totals = self._dataset.reduce(
          (tf.constant(0.0), tf.constant(0.0), tf.constant(0.0)), add_batch)
      return totals[0] / totals[2], totals[1] / totals[2]

    self._evaluate = evaluate

  def __call__(self, weights):
    for variable, value in zip(self._model.trainable_variables, weights):
      variable.assign(value)
    loss, accuracy = self._evaluate()
    return float(loss), float(accuracy)


def _parameter_counts(keras_model):
  """`(parameters of the run's model, parameters of its plain counterpart)`."""
  if any(keras_layers.is_factorized(layer) for layer in keras_model.layers):
    original, factorized = keras_layers.total_params(keras_model)
    return factorized, original
  count = int(sum(np.prod(v.shape) for v in keras_model.trainable_variables))
  return count, count


def prepare(config):
  """Loads and checks everything a run needs, touching nothing in the output folder."""
  check(config)
  data = registry.load(config.dataset, config.data_dir,
                       max_clients=config.clients if config.partition == 'natural' else None,
                       download=config.download, sequence_length=config.sequence_length)
  spec = clients_lib.PartitionSpec(
      config.dataset, config.partition, config.clients, config.seed,
      alpha=config.alpha if config.partition == 'dirichlet' else None,
      shards_per_client=config.shards_per_client if config.partition == 'shards' else None,
      examples_per_client=(config.examples_per_client if config.partition == 'sampled'
                           else None),
      client_test_fraction=(config.client_test_fraction
                            if config.parameterization in PERSONALIZED else None))
  parts = clients_lib.load_or_compute(spec, data, config.cache_dir)
  keras_model_fn = functools.partial(
      models.build, config.model, data.input_shape, data.num_classes, config.parameterization,
      gamma=None if config.rank else config.gamma, rank=config.rank or None,
      keep_plain=config.keep_plain, nonlinearity=config.nonlinearity,
      weight_decay=config.weight_decay, factor_init=config.factor_init,
      factor_lr_scale=_lr_scale(config.factor_lr_scale), weight_norm=config.weight_norm)
  tf.keras.utils.set_random_seed(config.seed)
  keras_model = keras_model_fn()
  if config.parameterization == 'fedper':
    names = {layer.name for layer in keras_model.layers}
    unknown = sorted(set(config.local_layers) - names)
    if unknown or not config.local_layers:
      raise ValueError(f'local_layers={list(config.local_layers)} must name layers of the model '
                       f'{sorted(names)}.')
  return data, parts, keras_model_fn, keras_model


def run(config):
  """Runs (or resumes) the experiment of `config`; returns its summary dict.

  With `config.workers` the TFF computations run on those remote workers (TFF's
  mergeable context splits each round's clients between them); the local
  runtime is restored afterwards. Installs `fedpara_tff.runtime`'s housekeeping (TFF's
  workers stopped at exit, a watchdog for SIGKILL) in the calling process.
  """
  runtime.install()
  addresses = distributed.parse_addresses(config.workers) if config.workers else None
  data, parts, keras_model_fn, keras_model = prepare(config)
  if not addresses:
    return _run(config, data, parts, keras_model_fn, keras_model, shares=None)
  shares = distributed.use_remote_workers(addresses, config.worker_connect_timeout,
                                          config.worker_failure_timeout)
  try:
    return _run(config, data, parts, keras_model_fn, keras_model, shares)
  finally:
    distributed.use_local_runtime()


def _run(config, data, parts, keras_model_fn, keras_model, shares):
  """The rounds of `run`, on whichever TFF context is installed."""
  initial_weights = [v.numpy() for v in keras_model.trainable_variables]
  signature = checkpoints.model_signature(keras_model)
  params, plain_params = _parameter_counts(keras_model)
  existed = os.path.isdir(config.output_dir)
  resuming = run_io.prepare(config.output_dir,
                            dict(config.identity(), data_sha256=data.fingerprint()),
                            config.overwrite)
  try:
    return _rounds(config, data, parts, keras_model_fn, initial_weights, signature, params,
                   plain_params, resuming, shares)
  except BaseException:
    # A new run that stops before its first checkpoint holds nothing worth resuming: its files
    # go, so that the corrected command can use the same folder.
    if not resuming and checkpoints.latest(os.path.join(config.output_dir, 'checkpoints')) is None:
      try:
        run_io.remove_run(config.output_dir)
        if not existed:
          os.rmdir(config.output_dir)
      except (OSError, run_io.RunConflictError):
        pass   # something else appeared in the folder meanwhile: leave it all
    raise


def _rounds(config, data, parts, keras_model_fn, initial_weights, signature, params,
            plain_params, resuming, shares):
  """Builds the process and runs the rounds of a prepared run folder; returns the summary."""
  element_spec = _element_spec(data)
  process = _Process(config, keras_model_fn, element_spec)
  state = process.initialize(initial_weights)
  store = None
  # Clients keep state between rounds in the personalised runs (local variables) and with
  # SCAFFOLD / FedDyn (their control variates / gradient state): the process's layout says.
  if process.local_layout:
    store = client_store.open_store(config.client_store, config.clients, config.output_dir,
                                    process.local_layout, resuming)
    process.use_store(store)
  try:
    return _run_rounds(config, data, parts, keras_model_fn, signature, params, plain_params,
                       resuming, shares, process, state, store)
  finally:
    if store is not None:
      store.close()


def _resume_point(checkpoint_dir, state, signature, store):
  """The checkpoint to resume from: the newest intact one, or, with an SQLite client store,
  the one of the store's committed round (a checkpoint newer than the store was written just
  before a kill, and its clients' state never committed)."""
  if store is None or store.kind == 'memory':
    return checkpoints.load_latest(checkpoint_dir, state, signature)
  return checkpoints.load_round(checkpoint_dir, state, signature, store.committed_round())


def _run_rounds(config, data, parts, keras_model_fn, signature, params, plain_params, resuming,
                shares, process, state, store):
  """The rounds of `_rounds`, with the process and its client store ready."""
  personalized = config.parameterization in PERSONALIZED
  stateful = store is not None
  counters = dict(bytes_uploaded=0, bytes_downloaded=0, wall_time_s=0.0)
  start_round = 0
  checkpoint_dir = os.path.join(config.output_dir, 'checkpoints')
  found = _resume_point(checkpoint_dir, state, signature, store) if resuming else None
  if found:
    start_round, state, counters, local_store = found
    if stateful and store.kind == 'memory':
      store.restore(local_store, start_round)
  train_cd = clients_lib.to_client_data(data.x_train, data.y_train, parts.train)
  ids = train_cd.client_ids
  test_cd = (clients_lib.to_client_data(data.x_train, data.y_train, parts.test)
             if personalized else None)
  eval_ids = sample_eval_clients(config.seed, ids, config.eval_clients)
  evaluator = None if personalized else _Evaluator(
      keras_model_fn, data.x_test, data.y_test, config.max_test_examples)

  writer = run_io.MetricsWriter(config.output_dir, start_round)
  bar = tqdm.tqdm(range(start_round + 1, config.rounds + 1), initial=start_round,
                  total=config.rounds, disable=None if config.progress else True,
                  desc=config.parameterization, unit='round', leave=False)
  try:
    for round_num in bar:
      began = time.perf_counter()
      chosen = sample_clients(config.seed, round_num, len(ids), config.clients_per_round)
      # The client work repeats each dataset local_epochs times itself.
      datasets = [train_cd.create_tf_dataset_for_client(ids[c]).shuffle(
          len(parts.train[c]), seed=_shuffle_seed(config.seed, round_num, c),
          reshuffle_each_iteration=True).batch(config.batch_size) for c in chosen]
      try:
        state, row = process.next(state, [ids[c] for c in chosen], datasets)
      except distributed.WorkerUnavailableError as e:
        kept = checkpoints.latest(checkpoint_dir)
        raise RunInterruptedError(
            f'round {round_num}: {e}; the last checkpoint (round {kept[0] if kept else 0}) is '
            f'kept: start the worker again and rerun the same command to resume.') from None
      diverged = divergence(row, len(chosen), [np.asarray(w) for w in
                                               process.global_weights(state)])
      if diverged is None and evaluator and (round_num % config.eval_every == 0
                                             or round_num == config.rounds):
        row['test_loss'], row['test_accuracy'] = evaluator(process.global_weights(state))
        diverged = divergence(row, len(chosen), [])
      if diverged:
        kept = checkpoints.latest(checkpoint_dir)
        raise RunDivergedError(
            f'round {round_num}: training diverged: {diverged} at client_learning_rate='
            f'{config.client_learning_rate}, server_learning_rate={config.server_learning_rate}; '
            f'the last checkpoint (round {kept[0] if kept else 0}) is kept. Try a smaller '
            f'learning rate, e.g. --client_learning_rate={config.client_learning_rate / 10:g}.')
      counters['bytes_uploaded'] += row['bytes_uploaded']
      counters['bytes_downloaded'] += row['bytes_downloaded']
      counters['wall_time_s'] += time.perf_counter() - began
      row.update(round=round_num, clients=len(chosen),
                 cumulative_gb=(counters['bytes_uploaded'] + counters['bytes_downloaded']) / 1e9,
                 wall_time_s=counters['wall_time_s'])
      if round_num % config.eval_every == 0 or round_num == config.rounds:
        if personalized:
          row['personalized_accuracy'] = process.evaluate(
              state, eval_ids, (test_cd.create_tf_dataset_for_client(i).batch(256)
                                for i in eval_ids))
          row['personalized_clients'] = len(eval_ids)
      writer.write(row)
      bar.set_postfix(loss=f'{row["train_loss"]:.3f}', gb=f'{row["cumulative_gb"]:.4f}')
      if round_num % config.checkpoint_every == 0 or round_num == config.rounds:
        # The server state first, then the clients' (one SQLite transaction with the round):
        # a kill between the two resumes from the previous checkpoint (`_resume_point`).
        checkpoints.save(checkpoint_dir, round_num, state, signature, counters,
                         store.snapshot() if stateful and store.kind == 'memory' else None)
        if stateful:
          store.commit(round_num)
  finally:
    bar.close()
    writer.close()

  rows = run_io.read_metrics(config.output_dir)
  last = rows[-1] if rows else {}
  summary = dict(
      parameterization=config.parameterization, model=config.model, dataset=config.dataset,
      parameters=params, plain_parameters=plain_params, rounds=int(last.get('round', 0)),
      train_loss=last.get('train_loss', math.nan),
      test_accuracy=_last_value(rows, 'test_accuracy'),
      personalized_accuracy=_last_value(rows, 'personalized_accuracy'),
      gb_uploaded=counters['bytes_uploaded'] / 1e9,
      gb_downloaded=counters['bytes_downloaded'] / 1e9,
      gb_total=(counters['bytes_uploaded'] + counters['bytes_downloaded']) / 1e9,
      wall_time_s=counters['wall_time_s'], output_dir=config.output_dir,
      worker_shares=[dataclasses.asdict(share) for share in shares or []])
  run_io.write_summary(config.output_dir, summary)
  plot.plot_runs([config.output_dir], os.path.join(config.output_dir, run_io.PLOT_FILE))
  return summary


def _last_value(rows, key):
  values = [r[key] for r in rows if not math.isnan(r.get(key, math.nan))]
  return values[-1] if values else math.nan


def format_summaries(summaries):
  """The final table of one or more runs, as printed on stdout."""
  header = (f'{"run":<10} {"params":>11} {"rounds":>6} {"train loss":>10} {"test acc":>9} '
            f'{"pers. acc":>9} {"GB up":>9} {"GB down":>9} {"GB total":>9} {"time s":>8}')
  lines = [header, '-' * len(header)]
  for s in summaries:
    lines.append(
        f'{s["parameterization"]:<10} {s["parameters"]:>11,} {s["rounds"]:>6} '
        f'{s["train_loss"]:>10.4f} {_fmt(s["test_accuracy"]):>9} '
        f'{_fmt(s["personalized_accuracy"]):>9} {s["gb_uploaded"]:>9.4f} '
        f'{s["gb_downloaded"]:>9.4f} {s["gb_total"]:>9.4f} {s["wall_time_s"]:>8.1f}')
  return '\n'.join(lines)


def _fmt(value):
  return '-' if value is None or math.isnan(value) else f'{value:.4f}'
