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
  # (Above 32, the kernel's larger side, a rank is refused: the test after next.)
  with pytest.warns(UserWarning, match=r'rank 30 adds parameters without adding reachable rank '
                    r'for kernel shape \(32, 16\) \(rank 4 already reaches 16\)'):
    layer = kl.FedParaDense(16, rank=30)
    layer(np.zeros((1, 32), np.float32))
  assert layer.ranks == [30]
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


@pytest.mark.parametrize('make, inputs, bound, useful, shapes', [
    (lambda: kl.FedParaDense(8, rank=10**6), (1, 20), 20, 8, '((20, 8))'),
    (lambda: kl.LowRankDense(8, rank=10**5), (1, 20), 20, 8, '((20, 8))'),
    (lambda: kl.FedParaConv2D(8, 3, rank=999999), (1, 6, 6, 3), 27, 8, '((3, 3, 3, 8))'),
    (lambda: kl.PFedParaLSTM(16, rank=65), (1, 4, 8), 64, 16, '((8, 64), (16, 64))'),
])
def test_a_rank_above_every_kernels_larger_side_is_refused_before_any_factor(
    make, inputs, bound, useful, shapes):
  """Issue 38: FedParaDense(8, rank=10**6) on 20 inputs built 56M parameters, and a huge conv
  rank ran out of memory: refused in one line."""
  layer = make()
  rank = layer.rank if hasattr(layer, 'rank') else layer.cell.rank
  with pytest.raises(ValueError) as e:
    layer(np.zeros(inputs, np.float32))
  message = str(e.value)
  assert message.endswith(f': rank {rank} is above {bound}, the larger side of its '
                          f'kernel{"s" if "), (" in shapes else ""} {shapes}; give a rank in '
                          f'[1, {useful}] (a larger one adds parameters but no rank).'), message
  assert '\n' not in message


def test_an_lstm_rank_above_its_narrow_input_kernel_but_within_the_recurrent_one_is_accepted():
  # The paper's LSTM: rank 14 on an (8, 1024) input kernel adds nothing there, but reaches rank on
  # the (256, 1024) recurrent kernel: a warning, not a refusal.
  layer = kl.FedParaLSTM(32, rank=9)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    layer(np.zeros((1, 3, 8), np.float32))
  assert layer.count_params() > 0
