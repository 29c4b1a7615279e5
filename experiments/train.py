r"""Federated training of an original, low-rank, FedPara or pFedPara model on real data.

One run: load the data set, split it into clients (cached), build the model
and TFF process, train for --rounds rounds, evaluate every --eval_every
rounds, and write `metrics.csv`, TensorBoard events, checkpoints, a summary and
an accuracy-vs-GB plot into --output_dir. Restarted with the same flags it
resumes from its latest checkpoint. The paper's settings are flagfiles in
experiments/configs/.

  python -m experiments.train --flagfile=experiments/configs/mnist5k_quick.cfg \
      --parameterization=fedpara --output_dir=runs/fedpara
"""

# Only what the flags need loads before they are parsed: TensorFlow and TFF load in `main`
# (docs/DESIGN.md, "Fast start").
import dataclasses
import importlib
import os
import signal
import sys

from absl import flags
from absl import logging

from experiments import flagfiles
from experiments import run_config
from experiments.data import partition
from experiments.data import registry
from fedpara_tff import choices
from fedpara_tff import client_store
from fedpara_tff import local_worker
from fedpara_tff import runtime
from fedpara_tff import settings as settings_lib
from keras_layers import factor_options

_DEFAULTS = run_config.DEFAULTS  # the flags' defaults are the config's

# Data and clients.
flags.DEFINE_enum('dataset', _DEFAULTS.dataset, registry.DATASETS, 'Data set.')
flags.DEFINE_string('data_dir', None,
                                'Where the data files are (default: each loader\'s own place).')
flags.DEFINE_bool('download', False,
                              'Let TFF download its SQLite caches when missing (needs network).')
flags.DEFINE_integer('sequence_length', _DEFAULTS.sequence_length, 'Characters per text sequence.')
flags.DEFINE_enum('partition', _DEFAULTS.partition, partition.KINDS, 'How to split into clients.')
flags.DEFINE_float('alpha', _DEFAULTS.alpha, 'Dirichlet concentration (partition=dirichlet).')
flags.DEFINE_integer('shards_per_client', _DEFAULTS.shards_per_client,
    'Label shards per client (partition=shards).')
flags.DEFINE_integer('examples_per_client', _DEFAULTS.examples_per_client,
                     'Examples each client draws with replacement (partition=sampled).')
flags.DEFINE_integer('clients', _DEFAULTS.clients, 'Clients in total.')
flags.DEFINE_integer('clients_per_round', _DEFAULTS.clients_per_round, 'Clients sampled per round.')
flags.DEFINE_float(
    'client_test_fraction', _DEFAULTS.client_test_fraction,
    'Share of each client\'s data held out for personalised accuracy.')
flags.DEFINE_string('cache_dir', None,
                                 'Partition cache (default ~/.cache/fedpara_tff/partitions).')
# Model.
flags.DEFINE_enum('model', _DEFAULTS.model, run_config.MODELS, 'Model of the zoo.')
flags.DEFINE_enum('parameterization', _DEFAULTS.parameterization, run_config.PARAMETERIZATIONS,
                                      'original | lowrank | fedpara | pfedpara | fedper | local.')
flags.DEFINE_float('gamma', _DEFAULTS.gamma,
    'Rank knob in [0, 1] (docs/DESIGN.md, "Rank rule"); ignored with --rank.')
flags.DEFINE_integer('rank', 0, 'Explicit inner rank of every factorised layer (0: use --gamma).')
flags.DEFINE_enum('nonlinearity', 'none', ['none', 'tanh'],
                                  'Applied to each Hadamard term (FedPara / pFedPara).')
flags.DEFINE_enum('factor_init', _DEFAULTS.factor_init, list(factor_options.FACTOR_INITS),
                  'Initialisation of the factors (matched_*: the composed kernel has the plain '
                  'layer\'s variance; he_*: He-normal per factor).')
flags.DEFINE_string('factor_lr_scale', 'none',
                    "none | safe | matched | a positive number: SGD on the factors at that "
                    "multiple of the learning rate (matched: each layer's step equals the plain "
                    "layer's at init; safe: at every step, the plain layer's step projected on "
                    "directions the factors can move the kernel; with client Adam: each kernel's update "
                    "divided by its Jacobian's infinity norm; docs/DESIGN.md).")
flags.DEFINE_float('jacobian_correction', _DEFAULTS.jacobian_correction,
                   'Jacobian correction strength lambda (paper eqs. 6-9); 0: off.')
flags.DEFINE_bool('weight_norm', _DEFAULTS.weight_norm,
                  'Weight-normalise the LSTM kernels (original, low-rank and FedPara alike, as '
                  'the paper\'s LSTM runs; model=lstm only).')
flags.DEFINE_enum('client_store', _DEFAULTS.client_store, list(client_store.KINDS),
                  'Where stateful clients keep their state: memory (in the checkpoints), sqlite '
                  '(client_state.sqlite in the run folder, only the round\'s clients read and '
                  'written), auto (sqlite above 1,000 clients).')
flags.DEFINE_integer('eval_clients', _DEFAULTS.eval_clients,
                     'Clients in the personalised evaluation: a seeded sample of this many '
                     '(0: every client).')
flags.DEFINE_list('keep_plain', list(_DEFAULTS.keep_plain), 'Layers left unfactorised.')
flags.DEFINE_list('local_layers', list(_DEFAULTS.local_layers), 'Layers kept on clients (fedper).')
# A pretrained model (docs/USAGE.md, "Adapters").
flags.DEFINE_string('pretrained', _DEFAULTS.pretrained,
                    'Weights file of the plain --model for this data (experiments.pretrain '
                    'writes one): the run fine-tunes it (parameterization=original) or trains '
                    'adapters on it (--adapters).')
flags.DEFINE_bool('adapters', _DEFAULTS.adapters,
                  'With --pretrained: freeze the model and train a --parameterization delta '
                  '(fedpara, pfedpara or lowrank, of --rank or --gamma) on every Dense / Conv / '
                  'LSTM not in --keep_plain or --trainable_layers; only the adapters travel.')
flags.DEFINE_float('adapter_alpha', _DEFAULTS.adapter_alpha,
                   'Adapters\' scale numerator: W = W0 + alpha / rank * D (default: the rank).')
flags.DEFINE_list('trainable_layers', list(_DEFAULTS.trainable_layers),
                  'With --pretrained: layers that train as they are (e.g. logits); every other '
                  'layer without an adapter is frozen (none named, without --adapters: all '
                  'train).')
# Algorithm.
flags.DEFINE_enum('algorithm', _DEFAULTS.algorithm, choices.ALGORITHMS, 'Federated algorithm.')
flags.DEFINE_enum('client_optimizer', _DEFAULTS.client_optimizer,
                  list(choices.CLIENT_OPTIMIZERS),
                  'Client optimizer, reset every round (adam: beta 0.9 / 0.999, eps 1e-7).')
flags.DEFINE_float('client_learning_rate', _DEFAULTS.client_learning_rate,
    'Client SGD learning rate.')
flags.DEFINE_float('server_learning_rate', None,
    'Server optimizer learning rate; default 1.0 with server SGD (FedAvg), 0.01 with '
    'fedadam / fedyogi / fedadagrad (the paper\'s FedAdam; 1.0 diverges there).')
flags.DEFINE_float('lr_decay', _DEFAULTS.lr_decay, 'Client learning rate x this per round (0, 1].')
flags.DEFINE_float('client_momentum', _DEFAULTS.client_momentum, 'Client SGD momentum.')
flags.DEFINE_float('server_momentum', _DEFAULTS.server_momentum,
    'Server SGD momentum (fedavg/fedprox).')
flags.DEFINE_float('server_beta_2', _DEFAULTS.server_beta_2,
    'Second-moment decay of the server Adam / Yogi (fedadam/fedyogi; the paper\'s FedAdam: 0.99).')
flags.DEFINE_float('weight_decay', _DEFAULTS.weight_decay,
    'L2 weight decay on trainable variables.')
flags.DEFINE_float('fedprox_mu', _DEFAULTS.fedprox_mu, 'FedProx proximal strength mu.')
flags.DEFINE_float('feddyn_alpha', _DEFAULTS.feddyn_alpha,
                   'FedDyn alpha (Acar et al. 2021; the paper\'s Table 3 uses 0.1).')
flags.DEFINE_integer('quantization_bits', _DEFAULTS.quantization_bits,
                                          'Quantize uploads to this many bits (0: float32).')
flags.DEFINE_enum('aggregation', _DEFAULTS.aggregation, choices.AGGREGATIONS,
                  "factor_mean: average each factor (FedAvg); kernel_mean: refit each factorised "
                  "kernel's factors to the mean of the clients' kernels (not with "
                  "--quantization_bits).")
flags.DEFINE_integer('local_epochs', _DEFAULTS.local_epochs, 'Passes over client data per round.')
flags.DEFINE_integer('batch_size', _DEFAULTS.batch_size, 'Client mini-batch size.')
flags.DEFINE_integer('rounds', _DEFAULTS.rounds, 'Rounds in total (a restart may raise it).')
flags.DEFINE_integer('seed', _DEFAULTS.seed,
    'Seed of partition, initialisation, sampling, shuffling.')
# Outputs.
flags.DEFINE_string('output_dir', None, 'Run folder (metrics, checkpoints, plot).')
flags.DEFINE_bool('overwrite', False, 'Replace a run with other flags in output_dir.')
flags.DEFINE_integer('eval_every', _DEFAULTS.eval_every,
    'Evaluate every N rounds (and at the end).')
flags.DEFINE_integer('checkpoint_every', _DEFAULTS.checkpoint_every, 'Checkpoint every N rounds.')
flags.DEFINE_integer('max_test_examples', _DEFAULTS.max_test_examples,
                                          'Evaluate on the first N test examples (0: all).')
flags.DEFINE_bool('progress', True, 'Show a progress bar (on a terminal).')
# Backends.
flags.DEFINE_enum('backend', _DEFAULTS.backend, run_config.BACKENDS,
                  'tff: TFF runtime (local or --workers); tf: the whole round in this process '
                  'with TensorFlow, clients on --gpus: no TFF worker, no socket (the way to run '
                  'in a container).')
flags.DEFINE_string('gpus', '', 'GPUs for backend=tf: "all" or indices "0,1"; empty: the CPU.')
# Remote TFF workers.
flags.DEFINE_string('workers', '',
                    'host:port,... of TFF workers (python -m experiments.worker); empty: local.')
flags.DEFINE_float('worker_connect_timeout', _DEFAULTS.worker_connect_timeout,
                   'Seconds to wait for every worker at start.')
flags.DEFINE_float('worker_failure_timeout', _DEFAULTS.worker_failure_timeout,
                   'Seconds a worker may stay unreachable mid-round before the run stops.')
flags.DEFINE_string('workers_tls_dir', '',
                    'Folder with ca.pem, driver.pem and driver.key (scripts/make_worker_certs.sh): '
                    'mutual TLS to --workers (required for workers on another host).')
flags.DEFINE_bool('insecure_workers', False,
                  'Plain gRPC to --workers on another host (whoever reaches them runs code).')
flags.DEFINE_bool('require_isolated_worker', False,
                  'Refuse to run when the local TFF worker cannot be kept off the network (a '
                  'private network namespace): the default; this also overrides '
                  'FEDPARA_ALLOW_OPEN_LOCAL_WORKER=1 (environment: '
                  'FEDPARA_REQUIRE_ISOLATED_WORKER=1).')
flags.DEFINE_bool('allow_open_local_worker', False,
                  'Where no private network namespace can be made (Docker\'s default profile, '
                  'user namespaces off), run the local TFF worker on a port of every interface, '
                  'unauthenticated, instead of refusing (environment: '
                  'FEDPARA_ALLOW_OPEN_LOCAL_WORKER=1).')

flags.mark_flag_as_required('output_dir')


def _register_check(name, check):
  """The flag's validator: `check` (a `FIELD_CHECKS` entry, the field's one rule) on its value;
  its one-line ValueError is the flag error."""
  def validate(value):
    try:
      check(value)
    except ValueError as e:
      raise flags.ValidationError(str(e)) from None
    return True
  flags.register_validator(name, validate)


# Each field's rule is defined once: the round's in `RoundSettings.FIELD_CHECKS` (under the flag
# name `fedprox_mu` for FedProx's proximal strength), the run's own in `run_config.FIELD_CHECKS`.
_ROUND_FLAGS = {name: name for name in settings_lib.FIELD_CHECKS if name != 'proximal_strength'}
for _name, _check in ({_flag: settings_lib.FIELD_CHECKS[_field]
                       for _flag, _field in _ROUND_FLAGS.items()}
                      | run_config.FIELD_CHECKS).items():
  _register_check(_name, _check)
flags.register_multi_flags_validator(
    ['clients', 'clients_per_round'], lambda f: f['clients_per_round'] <= f['clients'],
    message='--clients_per_round must not exceed --clients.')


def config_from_flags(**overrides):
  """The `run_config.RunConfig` of the parsed flags (one flag per field), with `overrides` applied."""
  values = {f.name: flags.FLAGS[f.name].value for f in dataclasses.fields(run_config.RunConfig)}
  values.update(rank=values['rank'] or None,
                nonlinearity=None if values['nonlinearity'] == 'none' else values['nonlinearity'],
                # `--factor_lr_scale=` (empty) is none: recorded as None, as `=none` is.
                factor_lr_scale=(None if values['factor_lr_scale'].strip() in ('none', '')
                                 else values['factor_lr_scale']),
                keep_plain=tuple(values['keep_plain']), local_layers=tuple(values['local_layers']),
                trainable_layers=tuple(values['trainable_layers']))
  # `~` in a flagfile reaches us unexpanded (only a shell expands it on a command line).
  for name in ('output_dir', 'cache_dir', 'data_dir', 'pretrained'):
    if values[name]:
      values[name] = os.path.expanduser(values[name])
  values.update(overrides)
  return run_config.RunConfig(**values)   # checks every setting: ValueError, one line


def run_or_exit(config, program='train'):
  """`runner.run(config)`, turning every refusal into one line on stderr and exit 1."""
  # pylint: disable=g-import-not-at-top  # TensorFlow and TFF load once the flags are parsed
  import tensorflow as tf
  from experiments import checkpoints
  from experiments import round_loop
  from experiments import runner
  from experiments.data import common
  from fedpara_tff import distributed
  # pylint: enable=g-import-not-at-top
  try:
    return runner.run(config)
  except (ValueError, common.DataNotFoundError, distributed.WorkerUnavailableError,
          local_worker.WorkerIsolationError,
          round_loop.RunInterruptedError) as e:
    message = ' '.join(str(e).split())
    raise SystemExit(f'{program}: error: {message}') from None
  except (OSError, tf.errors.OpError) as e:
    # A full disk, a folder made read-only or removed under the run: one line naming the path.
    what = (f'{e.strerror}: {e.filename}' if isinstance(e, OSError) and e.filename
            else ' '.join(str(getattr(e, 'message', e)).split()))
    note = checkpoints.kept_note(checkpoints.directory_of(config.output_dir), 'fix that and ')
    raise SystemExit(f'{program}: error: cannot write the run ({what}); {note}.') from None
  except KeyboardInterrupt as e:
    signum = getattr(e, 'signum', signal.SIGINT)
    note = checkpoints.kept_note(checkpoints.directory_of(config.output_dir))
    print(f'{program}: stopped by {signal.Signals(signum).name}; {note}.', file=sys.stderr,
          flush=True)
    runtime.exit_now(128 + signum)


def install_runtime(program, config):
  """`runtime.install()` for the run of `config`: with TFF's local worker (under
  --require_isolated_worker and --allow_open_local_worker) only when the run needs it
  (`run_config.runs_without_local_worker`), otherwise a runtime that refuses to start one. A
  refusal is one line and exit 1."""
  instead = run_config.runs_without_local_worker(config)
  try:
    runtime.install(require_isolation=flags.FLAGS.require_isolated_worker or None,
                    allow_open=flags.FLAGS.allow_open_local_worker or None,
                    worker=instead is None, without_worker=instead or '')
  except local_worker.WorkerIsolationError as e:
    raise SystemExit(f'{program}: error: {e}') from None


def main(argv):
  flagfiles.no_positional(argv, 'train')
  logging.set_verbosity(logging.WARNING)
  try:
    config = config_from_flags()
  except ValueError as e:
    raise SystemExit(f'train: error: {" ".join(str(e).split())}') from None
  install_runtime('train', config)
  runtime.sigterm_as_keyboard_interrupt()
  summary = run_or_exit(config)
  from experiments import run_io  # pylint: disable=g-import-not-at-top  # loads TensorFlow
  print(run_io.format_summaries([summary]))
  for share in summary['worker_shares']:
    print(f'worker {share["address"]}: {share["calls"]} computation calls, '
          f'{share["clients"]} client values')
  print(f'metrics, checkpoints and plot: {summary["output_dir"]}')


def load_heavy_modules():
  """TensorFlow, Keras and the layers, loaded once the flags parsed and before absl runs `main`
  (`experiments.flagfiles.run_main`)."""
  importlib.import_module('tensorflow')
  importlib.import_module('keras_layers').load_layers()


def entry_point():
  """The console script (and `python -m`): packaged flagfiles are found by name."""
  flagfiles.run_main(main, load=load_heavy_modules)


if __name__ == '__main__':
  entry_point()
