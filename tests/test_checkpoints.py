"""Checkpoints: a damaged one (unreadable, or holding non-finite values) is skipped for the
previous intact one, with one line naming it."""

import collections
import io
import os

import numpy as np

from experiments import checkpoints

SIGNATURE = [['dense/kernel', [2, 3]]]


def _state(value):
  return collections.OrderedDict(global_weights=[np.full((2, 3), value, np.float32)],
                                 round_num=np.int32(0))


def test_a_checkpoint_holding_nan_is_damaged_and_the_previous_one_is_resumed(tmp_path):
  counters = dict(bytes_uploaded=0, bytes_downloaded=0, wall_time_s=0.0)
  checkpoints.save(str(tmp_path), 1, _state(1.0), SIGNATURE, counters)
  checkpoints.save(str(tmp_path), 2, _state(np.nan), SIGNATURE, counters)
  log = io.StringIO()
  round_num, state, _, _ = checkpoints.load_latest(str(tmp_path), _state(0.0), SIGNATURE, log=log)
  assert round_num == 1
  np.testing.assert_array_equal(state['global_weights'][0], np.ones((2, 3), np.float32))
  path = checkpoints.path_for(str(tmp_path), 2)
  assert log.getvalue().splitlines() == [
      f'checkpoint {path} is damaged (non-finite values in state_00000); resuming from round 1 '
      f'instead.']


def test_a_checkpoint_renamed_to_another_round_is_damaged(tmp_path):
  counters = dict(bytes_uploaded=0, bytes_downloaded=0, wall_time_s=0.0)
  checkpoints.save(str(tmp_path), 1, _state(1.0), SIGNATURE, counters)
  checkpoints.save(str(tmp_path), 2, _state(2.0), SIGNATURE, counters)
  renamed = checkpoints.path_for(str(tmp_path), 7)
  os.rename(checkpoints.path_for(str(tmp_path), 1), renamed)
  log = io.StringIO()
  round_num, state, _, _ = checkpoints.load_latest(str(tmp_path), _state(0.0), SIGNATURE, log=log)
  assert round_num == 2 and state['global_weights'][0][0, 0] == 2.0
  assert log.getvalue().splitlines() == [
      f'checkpoint {renamed} is damaged (it holds round 1, not the round its name says); '
      f'resuming from round 2 instead.']
