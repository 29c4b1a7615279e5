"""Many clients: the sampled partition, partition cache keys, a run with more clients than
examples (SQLite store, sampled personalised evaluation)."""

import os

import numpy as np
import pytest

from experiments import checkpoints
from experiments import run_config
from experiments import run_io
from experiments import runner
from experiments.data import clients as clients_lib
from experiments.data import partition
from tests import tff_support as ts


def test_sampled_partition_draws_with_replacement_and_is_seeded():
  parts = partition.sampled(50, 1000, 7, seed=3)
  assert len(parts) == 1000 and all(len(p) == 7 for p in parts)
  flat = np.concatenate(parts)
  assert flat.min() >= 0 and flat.max() < 50
  assert len(np.unique(flat)) == 50   # 7,000 draws over 50 examples: every one is used
  again = partition.sampled(50, 1000, 7, seed=3)
  assert all(np.array_equal(a, b) for a, b in zip(parts, again))
  with pytest.raises(ValueError, match=r'examples_per_client must be an integer >= 1; got 0'):
    partition.sampled(50, 10, 0, seed=0)


def test_partition_keys_of_other_kinds_do_not_change():
  """Cached partitions of the other kinds keep their keys now that specs have
  examples_per_client (the key below was computed before the field existed)."""
  labels = np.arange(10) % 3
  assert clients_lib.PartitionSpec('mnist5k', 'iid', 4, 0).key(labels) == 'f43d1648bbb5bf04316e241a'
  sampled = clients_lib.PartitionSpec('mnist5k', 'sampled', 4, 0, examples_per_client=5)
  assert sampled.key(labels) != clients_lib.PartitionSpec(
      'mnist5k', 'sampled', 4, 0, examples_per_client=6).key(labels)


def test_more_clients_than_examples_with_the_sqlite_store(tmp_path):
  config = run_config.RunConfig(
      output_dir=str(tmp_path / 'run'), cache_dir=str(tmp_path / 'cache'), dataset='mnist5k',
      model='mlp', parameterization='pfedpara', partition='sampled', clients=6000,
      examples_per_client=4, clients_per_round=3, rounds=2, batch_size=4, eval_every=2,
      eval_clients=50, progress=False)
  summary = runner.run(config)
  assert summary['rounds'] == 2 and 0 <= summary['personalized_accuracy'] <= 1
  rows = run_io.read_metrics(config.output_dir)
  assert rows[-1]['personalized_clients'] == 50
  assert (tmp_path / 'run' / 'client_state.sqlite').exists()   # auto: sqlite above 1,000


# Adam divides by sqrt(v): a rounding difference between the backends in a near-zero gradient can
# move that weight by up to about lr (0.003) per step, so Adam is compared at 1e-3.
@pytest.mark.parametrize('optimizer, learning_rate, atol', [('sgd', 0.1, 1e-5),
                                                            pytest.param('adam', 0.003, 1e-3,
                                                                         marks=pytest.mark.slow)])
def test_sqlite_store_and_client_optimizers_agree_on_both_backends(tmp_path, optimizer,
                                                                   learning_rate, atol):
  """The in-process TensorFlow backend reads and writes the same store, and steps with the same
  client optimizer, as the TFF backend: same clients' state, same weights."""
  base = dict(cache_dir=str(tmp_path / 'cache'), dataset='mnist5k', model='mlp',
              parameterization='pfedpara', clients=4, clients_per_round=2, rounds=3,
              batch_size=64, client_store='sqlite', client_optimizer=optimizer,
              client_learning_rate=learning_rate, progress=False)
  runs = {backend: runner.run(run_config.RunConfig(output_dir=str(tmp_path / backend),
                                               backend=backend, **base))['output_dir']
          for backend in ('tff', 'tf')}
  (_, a), (_, b) = ts.store_snapshot(runs['tff']), ts.store_snapshot(runs['tf'])
  assert sorted(a) == sorted(b) and len(a) >= 3
  for client in a:
    for x, y in zip(a[client], b[client]):
      np.testing.assert_allclose(x, y, rtol=0, atol=atol, err_msg=client)
  with np.load(checkpoints.path_for(os.path.join(runs['tff'], 'checkpoints'), 3)) as x, \
      np.load(checkpoints.path_for(os.path.join(runs['tf'], 'checkpoints'), 3)) as y:
    for key in x.files:
      if key != 'meta':
        np.testing.assert_allclose(x[key], y[key], rtol=0, atol=atol, err_msg=key)
