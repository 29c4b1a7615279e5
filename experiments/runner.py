"""One federated experiment, end to end: data, clients, model, round driver, rounds, outputs.

`run(config)` is what `python -m experiments.train` executes. Everything that can be refused
(flags, data, partition, model options, output folder) is checked before the output folder is
touched (`experiments.run_config`); the rounds are `experiments.round_loop`'s, the folder's files
`experiments.run_io`'s.
"""

import collections
import dataclasses
import functools
import os
import sys

import numpy as np
import tensorflow as tf

import fedpara_tff
from fedpara_tff import client_store
from fedpara_tff import runtime
from fedpara_tff import distributed
from fedpara_tff import tf_backend
from fedpara_tff import worker_tls
import keras_layers
from experiments import checkpoints
from experiments import models
from experiments import plot
from experiments import round_loop
from experiments import run_config
from experiments import run_io
from experiments.data import clients as clients_lib
from experiments.data import registry


def element_spec(data):
  return collections.OrderedDict(
      x=tf.TensorSpec((None,) + data.x_train.shape[1:], tf.as_dtype(data.x_train.dtype)),
      y=tf.TensorSpec((None,) + data.y_train.shape[1:], tf.int32))


class _RunDriver:
  """The run's round driver, `driver` (`fedpara_tff`'s own round, for every algorithm and
  parameterisation: FedPara / low-rank / original, pFedPara, FedPer, local-only) with its client
  executor (`backend=tff`: TFF's local or remote workers; `backend=tf`: this process's devices,
  `--gpus`); what the run's rounds need of it in the run's terms: `next` gives the round's
  metrics as one flat row, `evaluate` the personalised accuracy over the clients."""

  def __init__(self, config, keras_model_fn, element_spec, workers=None):
    options = dict(settings=config.settings)
    if workers is not None:
      options['client_executor'] = workers
    if config.backend == 'tf':
      devices, note = tf_backend.resolve_devices(config.gpus)
      if note:
        print(note, file=sys.stderr, flush=True)
      # On the CPU fallback, one client per core at a time keeps both cores busy.
      parallel = (os.cpu_count() or 1) if note else 1
      options['client_executor'] = tf_backend.on_devices(devices, parallel_per_device=parallel)
    if config.parameterization == 'pfedpara':
      self.driver = fedpara_tff.build_pfedpara_driver(keras_model_fn, element_spec, **options)
    elif config.parameterization == 'fedper':
      self.driver = fedpara_tff.build_fedper_driver(
          keras_model_fn, element_spec, local_layers=list(config.local_layers), **options)
    elif config.parameterization == 'local':
      self.driver = fedpara_tff.build_local_only_driver(keras_model_fn, element_spec, **options)
    else:
      self.driver = fedpara_tff.build_fedavg_driver(keras_model_fn, element_spec, **options)

  def next(self, state, client_ids, datasets):
    state, metrics = self.driver.next(state, client_ids, datasets)
    communication = metrics['aggregator']['communication']
    row = dict(
        train_loss=float(metrics['train']['loss']),
        train_accuracy=float(metrics['train']['accuracy']),
        diverged_clients=int(metrics['train']['diverged_clients']),
        bytes_uploaded=int(communication['bytes_uploaded']),
        bytes_downloaded=int(metrics['train']['bytes_downloaded']))
    if 'aggregation_error' in metrics:
      row.update(aggregation_error_row(metrics['aggregation_error'], self.kernel_labels))
    return state, row

  @property
  def kernel_labels(self):
    """The labels of the factorised kernels whose aggregation error the round measures."""
    return [kernel.label for kernel in self.driver.round.layout.kernels]

  def global_weights(self, state):
    return state['global_weights']  # every variable, in order, when none is local

  def evaluate(self, state, client_ids, datasets):
    results = [r for r in self.driver.evaluate(state, client_ids, datasets)
               if r['num_examples']]   # an empty client has no accuracy (NaN)
    total = sum(r['num_examples'] for r in results)
    return sum(r['accuracy'] * r['num_examples'] for r in results) / total


def aggregation_error_row(error, labels):
  """The metrics row's aggregation-error cells (mean and max over the kernels of the share of
  the update, then of the kernel; `fedpara_tff.aggregation_error`) and, for TensorBoard, each
  kernel's under `aggregation_error/<label>` and `aggregation_error_kernel/<label>`."""
  update, kernel = (np.asarray(error[k], np.float64) for k in ('update_share', 'kernel_share'))
  row = dict(aggregation_error_mean=float(update.mean()), aggregation_error_max=float(update.max()),
             aggregation_error_kernel_mean=float(kernel.mean()),
             aggregation_error_kernel_max=float(kernel.max()))
  row['per_kernel'] = {**{f'aggregation_error/{l}': float(v) for l, v in zip(labels, update)},
                       **{f'aggregation_error_kernel/{l}': float(v)
                          for l, v in zip(labels, kernel)}}
  return row


def _parameter_counts(keras_model):
  """`(parameters of the run's model, parameters of its plain counterpart)`."""
  if any(keras_layers.is_factorized(layer) for layer in keras_model.layers):
    original, factorized = keras_layers.total_params(keras_model)
    return factorized, original
  count = int(sum(np.prod(v.shape) for v in keras_model.trainable_variables))
  return count, count


def prepare(config):
  """Loads and checks everything a run needs (its settings were checked when `config` was
  built), touching nothing in the output folder."""
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
                            if config.parameterization in run_config.PERSONALIZED else None))
  parts = clients_lib.load_or_compute(spec, data, config.cache_dir)
  keras_model_fn = functools.partial(
      models.build, config.model, data.input_shape, data.num_classes, config.parameterization,
      gamma=None if config.rank else config.gamma, rank=config.rank or None,
      keep_plain=config.keep_plain, nonlinearity=config.nonlinearity,
      weight_decay=config.weight_decay, factor_init=config.factor_init,
      factor_lr_scale=run_config.factor_lr_scale(config.factor_lr_scale), weight_norm=config.weight_norm,
      pretrained=config.pretrained, adapters=config.adapters, adapter_alpha=config.adapter_alpha,
      trainable_layers=config.trainable_layers)
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

  With `config.workers` the round's clients are trained on those remote workers
  (`fedpara_tff.distributed.RemoteWorkers`: TFF's mergeable context splits each round's clients
  between them); otherwise on this process's local TFF worker (`backend=tff`) or devices
  (`backend=tf`). Installs `fedpara_tff.runtime`'s housekeeping in the calling process: for a
  run that needs TFF's local worker, one no other host can reach, stopped at exit and watched
  for SIGKILL; for one that does not (`run_config.runs_without_local_worker`: the TF backend,
  remote workers), a runtime that refuses to start any local worker.
  """
  instead = run_config.runs_without_local_worker(config)
  runtime.install(worker=instead is None, without_worker=instead or '')
  addresses = distributed.parse_addresses(config.workers) if config.workers else None
  data, parts, keras_model_fn, keras_model = prepare(config)
  workers = None
  if addresses:
    credentials = files = None
    if config.workers_tls_dir:
      files = worker_tls.TLSFiles.from_dir(config.workers_tls_dir, 'driver')
      credentials = worker_tls.channel_credentials(files)
    elif not all(worker_tls.is_loopback(a) for a in addresses):
      print('warning: --insecure_workers: the workers get computations over plain gRPC; '
            'whoever reaches them can run code on them.', file=sys.stderr, flush=True)
    try:
      workers = distributed.RemoteWorkers(addresses, config.worker_connect_timeout,
                                          config.worker_failure_timeout, credentials)
    except distributed.WorkerUnavailableError as e:
      problem = files and worker_tls.handshake_problem(e.address, files)
      if problem:   # it answers, but TLS fails: say why, not "unreachable"
        raise distributed.WorkerUnavailableError(
            e.address, f'mutual TLS failed: {problem}', reachable=True) from None
      raise
  return _run(config, data, parts, keras_model_fn, keras_model, workers)


def _run(config, data, parts, keras_model_fn, keras_model, workers):
  """The rounds of `run`; `workers`: the `RemoteWorkers` executor, or None."""
  initial_weights = [v.numpy() for v in keras_model.trainable_variables]
  identity = dict(config.identity(), data_sha256=data.fingerprint())
  if config.pretrained:   # the weights, wherever the file lies
    identity['pretrained_sha256'] = models.pretrained_fingerprint(config.pretrained)
  # Checkpoints (and the client store) carry the run's identity: another run's are refused.
  signature = checkpoints.Signature(checkpoints.model_signature(keras_model),
                                    checkpoints.run_digest(identity))
  params, plain_params = _parameter_counts(keras_model)
  existed = os.path.isdir(config.output_dir)
  try:
    # One run at a time in a folder: a second one (or an --overwrite of a live run) is refused.
    with run_io.locked(config.output_dir):
      resuming = run_io.prepare(config.output_dir, identity, config.overwrite)
      if resuming:
        check_resumable(config.output_dir)
      else:
        # Made with the run: from now on a missing folder means deleted checkpoints.
        os.makedirs(checkpoints.directory_of(config.output_dir), exist_ok=True)
      try:
        return _rounds(config, data, parts, keras_model_fn, initial_weights, signature, params,
                       plain_params, resuming, workers)
      except BaseException:
        # A new run that stops before its first checkpoint holds nothing worth resuming: its
        # files go, so that the corrected command can use the same folder.
        if not resuming and checkpoints.latest(
            checkpoints.directory_of(config.output_dir)) is None:
          try:
            run_io.remove_run(config.output_dir)
          except (OSError, run_io.RunConflictError):
            pass   # something else appeared in the folder meanwhile: leave it all
        raise
  except BaseException:
    if not existed:   # the folder this run made, if the run left it empty
      try:
        os.rmdir(config.output_dir)
      except OSError:
        pass
    raise


def check_resumable(output_dir):
  """Before a run folder's run resumes, and before it trains: its `checkpoints` folder is a folder
  and is there, or the folder records no round, so that a resume never rewrites the recorded
  history (`metrics.csv`) from a round no checkpoint backs.

  Raises:
    run_io.DamagedFileError: one line naming the path and what to do; nothing was changed.
  """
  directory = checkpoints.directory_of(output_dir)
  if os.path.lexists(directory) and not os.path.isdir(directory):
    raise run_io.DamagedFileError(
        f'{directory} is a file, not the run\'s checkpoints folder, so the run cannot resume; '
        f'nothing was changed: put the checkpoints folder back, or pass --overwrite to start the '
        f'run again.')
  if os.path.isdir(directory):
    return
  recorded = [int(r['round']) for r in run_io.read_metrics(output_dir)]
  if recorded:
    raise run_io.DamagedFileError(
        f'{directory} is missing while {os.path.join(output_dir, run_io.METRICS_FILE)} records '
        f'rounds {run_io.format_ranges(recorded)}, so the run cannot continue its history; '
        f'nothing was changed: restore the checkpoints folder, or pass --overwrite to start the '
        f'run again.')
  os.makedirs(directory)


def _rounds(config, data, parts, keras_model_fn, initial_weights, signature, params,
            plain_params, resuming, workers):
  """Builds the round driver, runs the rounds of a prepared run folder; returns the summary."""
  driver = _RunDriver(config, keras_model_fn, element_spec(data), workers)
  state = driver.driver.initialize(initial_weights)
  store = None
  # Clients keep state between rounds in the personalised runs (local variables) and with
  # SCAFFOLD / FedDyn (their control variates / gradient state): the driver's layout says.
  if driver.driver.local_layout:
    store = client_store.open_store(config.client_store, config.clients, config.output_dir,
                                    driver.driver.local_layout, resuming, run=signature.run)
    driver.driver.use_store(store)
  try:
    counters = round_loop.run_rounds(config, data, parts, keras_model_fn, signature, resuming,
                                     driver, state, store)
  finally:
    if store is not None:
      store.close()
  summary = run_io.summarize(
      config.output_dir, dict(parameterization=config.parameterization, model=config.model,
                              dataset=config.dataset),
      counters, params, plain_params,
      [dataclasses.asdict(share) for share in (workers.shares if workers else [])])
  run_io.write_summary(config.output_dir, summary)
  plot.plot_runs([config.output_dir], os.path.join(config.output_dir, run_io.PLOT_FILE),
                 in_run_folder=True)
  return summary
