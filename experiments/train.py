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

from fedpara_tff import runtime  # pylint: disable=unused-import,g-bad-import-order

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging

from experiments import models
from experiments import runner
from experiments.data import common
from experiments.data import partition
from experiments.data import registry
import fedpara_tff

# Data and clients.
_DATASET = flags.DEFINE_enum('dataset', 'mnist5k', registry.DATASETS, 'Data set.')
_DATA_DIR = flags.DEFINE_string('data_dir', None,
                                'Where the data files are (default: each loader\'s own place).')
_DOWNLOAD = flags.DEFINE_bool('download', False,
                              'Let TFF download its SQLite caches when missing (needs network).')
_SEQUENCE_LENGTH = flags.DEFINE_integer('sequence_length', 80, 'Characters per text sequence.')
_PARTITION = flags.DEFINE_enum('partition', 'iid', partition.KINDS, 'How to split into clients.')
_ALPHA = flags.DEFINE_float('alpha', 0.5, 'Dirichlet concentration (partition=dirichlet).')
_SHARDS = flags.DEFINE_integer('shards_per_client', 2, 'Label shards per client (partition=shards).')
_CLIENTS = flags.DEFINE_integer('clients', 20, 'Clients in total.')
_CLIENTS_PER_ROUND = flags.DEFINE_integer('clients_per_round', 10, 'Clients sampled per round.')
_CLIENT_TEST_FRACTION = flags.DEFINE_float(
    'client_test_fraction', 0.2, 'Share of each client\'s data held out for personalised accuracy.')
_CACHE_DIR = flags.DEFINE_string('cache_dir', None,
                                 'Partition cache (default ~/.cache/fedpara_tff/partitions).')
# Model.
_MODEL = flags.DEFINE_enum('model', 'small_cnn', models.MODELS, 'Model of the zoo.')
_PARAMETERIZATION = flags.DEFINE_enum('parameterization', 'fedpara', models.PARAMETERIZATIONS,
                                      'original | lowrank | fedpara | pfedpara | fedper | local.')
_GAMMA = flags.DEFINE_float('gamma', 0.1, 'Rank knob in [0, 1] (SPEC section 2); ignored with --rank.')
_RANK = flags.DEFINE_integer('rank', 0, 'Explicit inner rank of every factorised layer (0: use --gamma).')
_NONLINEARITY = flags.DEFINE_enum('nonlinearity', 'none', ['none', 'tanh'],
                                  'Applied to each Hadamard term (FedPara / pFedPara).')
_KEEP_PLAIN = flags.DEFINE_list('keep_plain', ['logits'], 'Layers left unfactorised.')
_LOCAL_LAYERS = flags.DEFINE_list('local_layers', ['logits'], 'Layers kept on clients (fedper).')
# Algorithm.
_ALGORITHM = flags.DEFINE_enum('algorithm', 'fedavg', fedpara_tff.ALGORITHMS, 'Federated algorithm.')
_CLIENT_LR = flags.DEFINE_float('client_learning_rate', 0.1, 'Client SGD learning rate.')
_SERVER_LR = flags.DEFINE_float('server_learning_rate', 1.0, 'Server optimizer learning rate.')
_LR_DECAY = flags.DEFINE_float('lr_decay', 1.0, 'Client learning rate x this per round (0, 1].')
_CLIENT_MOMENTUM = flags.DEFINE_float('client_momentum', 0.0, 'Client SGD momentum.')
_SERVER_MOMENTUM = flags.DEFINE_float('server_momentum', 0.0, 'Server SGD momentum (fedavg/fedprox).')
_WEIGHT_DECAY = flags.DEFINE_float('weight_decay', 0.0, 'L2 weight decay on trainable variables.')
_FEDPROX_MU = flags.DEFINE_float('fedprox_mu', 0.01, 'FedProx proximal strength mu.')
_QUANTIZATION_BITS = flags.DEFINE_integer('quantization_bits', 0,
                                          'Quantize uploads to this many bits (0: float32).')
_LOCAL_EPOCHS = flags.DEFINE_integer('local_epochs', 1, 'Passes over client data per round.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 32, 'Client mini-batch size.')
_ROUNDS = flags.DEFINE_integer('rounds', 10, 'Rounds in total (a restart may raise it).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of partition, initialisation, sampling, shuffling.')
# Outputs.
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Run folder (metrics, checkpoints, plot).')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace a run with other flags in output_dir.')
_EVAL_EVERY = flags.DEFINE_integer('eval_every', 1, 'Evaluate every N rounds (and at the end).')
_CHECKPOINT_EVERY = flags.DEFINE_integer('checkpoint_every', 1, 'Checkpoint every N rounds.')
_MAX_TEST_EXAMPLES = flags.DEFINE_integer('max_test_examples', 0,
                                          'Evaluate on the first N test examples (0: all).')
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show a progress bar (on a terminal).')

flags.mark_flag_as_required('output_dir')
for _name, _check, _allowed in (
    ('alpha', lambda v: v > 0, '> 0'), ('gamma', lambda v: 0 <= v <= 1, 'in [0, 1]'),
    ('rank', lambda v: v >= 0, '>= 0'), ('client_learning_rate', lambda v: v > 0, '> 0'),
    ('server_learning_rate', lambda v: v > 0, '> 0'), ('lr_decay', lambda v: 0 < v <= 1, 'in (0, 1]'),
    ('client_momentum', lambda v: 0 <= v < 1, 'in [0, 1)'),
    ('server_momentum', lambda v: 0 <= v < 1, 'in [0, 1)'), ('weight_decay', lambda v: v >= 0, '>= 0'),
    ('fedprox_mu', lambda v: v >= 0, '>= 0'), ('quantization_bits', lambda v: 0 <= v <= 16, 'in [0, 16]'),
    ('clients', lambda v: v >= 1, '>= 1'), ('clients_per_round', lambda v: v >= 1, '>= 1'),
    ('local_epochs', lambda v: v >= 1, '>= 1'), ('batch_size', lambda v: v >= 1, '>= 1'),
    ('rounds', lambda v: v >= 1, '>= 1'), ('eval_every', lambda v: v >= 1, '>= 1'),
    ('checkpoint_every', lambda v: v >= 1, '>= 1'), ('shards_per_client', lambda v: v >= 1, '>= 1'),
    ('sequence_length', lambda v: v >= 1, '>= 1'), ('max_test_examples', lambda v: v >= 0, '>= 0'),
    ('client_test_fraction', lambda v: 0 < v < 1, 'in (0, 1)')):
  flags.register_validator(_name, _check, message=f'--{_name} must be {_allowed}.')
flags.register_multi_flags_validator(
    ['clients', 'clients_per_round'], lambda f: f['clients_per_round'] <= f['clients'],
    message='--clients_per_round must not exceed --clients.')


def config_from_flags(**overrides):
  """The `runner.RunConfig` of the parsed flags, with `overrides` applied."""
  config = runner.RunConfig(
      output_dir=_OUTPUT_DIR.value, dataset=_DATASET.value, data_dir=_DATA_DIR.value,
      download=_DOWNLOAD.value, sequence_length=_SEQUENCE_LENGTH.value, model=_MODEL.value,
      parameterization=_PARAMETERIZATION.value, gamma=_GAMMA.value, rank=_RANK.value or None,
      nonlinearity=None if _NONLINEARITY.value == 'none' else _NONLINEARITY.value,
      keep_plain=tuple(_KEEP_PLAIN.value), local_layers=tuple(_LOCAL_LAYERS.value),
      algorithm=_ALGORITHM.value, client_learning_rate=_CLIENT_LR.value,
      server_learning_rate=_SERVER_LR.value, lr_decay=_LR_DECAY.value,
      client_momentum=_CLIENT_MOMENTUM.value, server_momentum=_SERVER_MOMENTUM.value,
      weight_decay=_WEIGHT_DECAY.value, fedprox_mu=_FEDPROX_MU.value,
      quantization_bits=_QUANTIZATION_BITS.value, clients=_CLIENTS.value,
      clients_per_round=_CLIENTS_PER_ROUND.value, local_epochs=_LOCAL_EPOCHS.value,
      batch_size=_BATCH_SIZE.value, rounds=_ROUNDS.value, partition=_PARTITION.value,
      alpha=_ALPHA.value, shards_per_client=_SHARDS.value,
      client_test_fraction=_CLIENT_TEST_FRACTION.value, seed=_SEED.value,
      eval_every=_EVAL_EVERY.value, checkpoint_every=_CHECKPOINT_EVERY.value,
      overwrite=_OVERWRITE.value, cache_dir=_CACHE_DIR.value,
      max_test_examples=_MAX_TEST_EXAMPLES.value, progress=_PROGRESS.value)
  for key, value in overrides.items():
    setattr(config, key, value)
  return config


def run_or_exit(config, program='train'):
  """`runner.run(config)`, turning every refusal into one line on stderr and exit 1."""
  try:
    return runner.run(config)
  except (ValueError, common.DataNotFoundError) as e:
    message = ' '.join(str(e).split())
    raise SystemExit(f'{program}: error: {message}') from None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected positional arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  summary = run_or_exit(config_from_flags())
  print(runner.format_summaries([summary]))
  print(f'metrics, checkpoints and plot: {summary["output_dir"]}')


if __name__ == '__main__':
  app.run(main)
