"""Ranks are capped by the parameter budget, not by the channel counts (first VGG layer)."""

import warnings

import numpy as np
import pytest

import keras_layers as kl
from keras_layers import backend
from keras_layers import ranks


def test_first_vgg_layer_gets_the_rank_its_budget_allows():
  # 3 -> 64 channels, 3x3: 2R(64 + 3 + 9R) <= 1728 allows R = 6 (1,452 parameters); the old cap
  # min(I, O) = 3 refused it.
  shape = (3, 3, 3, 64)
  assert ranks.r_max(shape) == 6
  layer = kl.FedParaConv2D(64, 3, rank=6, padding='same')
  layer(np.zeros((1, 8, 8, 3), np.float32))
  assert layer.ranks == [6]
  assert sum(int(np.prod(v.shape)) for v in layer.trainable_weights) == 2 * 6 * (64 + 3 + 54) + 64
  assert ranks.rank_for_param_ratio(shape, 1.0) == 6


def test_reachable_rank_of_the_unfolding():
  # The (O, I k1 k2) = (64, 27) unfolding: FedPara min(R^2, 64, 27); low-rank min(R, 64, 27).
  shape = (3, 3, 3, 64)
  assert [ranks.reachable_rank('fedpara', shape, r) for r in (3, 5, 6)] == [9, 25, 27]
  assert ranks.reachable_rank('pfedpara', shape, 4) == 20
  assert ranks.reachable_rank('lowrank', shape, 5) == 5
  # The composed kernel really reaches it: rank of the unfolding of a random R = 6 layer.
  layer = kl.FedParaConv2D(64, 3, rank=6)
  layer(np.zeros((1, 8, 8, 3), np.float32))
  kernel = backend.to_numpy(layer.composed_kernel())
  unfolding = np.transpose(kernel, (3, 0, 1, 2)).reshape(64, 27)
  assert np.linalg.matrix_rank(unfolding) == 27


def test_rank_that_adds_nothing_warns_once_and_is_accepted():
  # min(in, out) = 16: FedPara reaches it from R = 4 (4^2 = 16), low-rank from R = 16.
  with pytest.warns(UserWarning, match=r'rank 40 adds parameters without adding reachable rank '
                    r'for kernel shape \(32, 16\) \(rank 4 already reaches 16\)'):
    layer = kl.FedParaDense(16, rank=40)
    layer(np.zeros((1, 32), np.float32))
  assert layer.ranks == [40]
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    # 16 = min(in, out): every step adds rank.
    kl.FedParaDense(16, rank=4)(np.zeros((1, 32), np.float32))
    kl.LowRankDense(16, rank=16)(np.zeros((1, 32), np.float32))
  assert not [w for w in caught if 'reachable rank' in str(w.message)]
  with pytest.warns(UserWarning, match=r'rank 20 .* \(rank 16 already reaches 16\)'):
    kl.LowRankDense(16, rank=20)(np.zeros((1, 32), np.float32))


def test_lowrank_conv_matching_is_capped_by_the_budget():
  # FedPara R = 3 on 3 -> 64 (564 parameters): low-rank R' (67 + 9 R') <= 564 gives R' = 5 > I = 3.
  assert ranks.lowrank_rank_matching((3, 3, 3, 64), 3) == 5
