"""Divergence: a round without a finite client stops the run in one line, the binary exits
non-zero, and what counts as diverged."""

import dataclasses
import math
import os

import numpy as np
import pytest

from experiments import round_loop
from experiments import runner
from experiments import train
from tests import run_support as rs


def test_a_round_without_a_finite_client_stops_the_run(tmp_path):
  config = rs.config(tmp_path, rounds=3, client_learning_rate=1e6)
  with pytest.raises(round_loop.RunDivergedError,
                     match=r'round 1: training diverged: every client\'s update was non-finite '
                           r'\(2 of 2 clients\); no checkpoint was written yet, so nothing is kept\. the '
                           r'client step overshoots at client_learning_rate=1000000.0: try '
                           r'--client_learning_rate=100000\.$'):
    runner.run(config)
  # A new run that stopped before its first checkpoint leaves nothing that blocks the fix.
  assert not os.path.exists(config.output_dir)
  config = dataclasses.replace(config, client_learning_rate=0.1, rounds=1)
  assert runner.run(config)['rounds'] == 1


def test_divergence_checks():
  fine = np.ones(3)
  assert round_loop.divergence({'diverged_clients': 1}, 2, [fine]) is None
  assert 'variable 1 of 2' in round_loop.divergence({'diverged_clients': 0}, 2,
                                                [fine, np.array([np.nan])])
  assert 'test loss is inf' in round_loop.divergence({'diverged_clients': 0, 'test_loss': math.inf},
                                                 2, [])


def test_the_binary_ends_a_diverged_run_with_one_line(tmp_path):
  """The binary's path (`train.run_or_exit`, in process): SystemExit with one line, which
  Python prints to stderr with exit status 1."""
  config = rs.config(tmp_path, rounds=2, client_learning_rate=1e6)
  with pytest.raises(SystemExit) as exit_:
    train.run_or_exit(config)
  message = str(exit_.value)
  assert message.startswith('train: error: round 1: training diverged') and '\n' not in message
