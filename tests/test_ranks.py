"""Rank rule and parameter counts against the worked figures of docs/DESIGN.md, "Rank rule"."""

import math
import warnings

import pytest

from keras_layers import ranks

CONV_256 = (3, 3, 256, 256)


def test_conv_256_rank_bounds_match_spec():
  assert ranks.r_min(CONV_256) == 16
  assert ranks.r_max(CONV_256) == 154


@pytest.mark.parametrize('gamma, rank, params', [(0.1, 30, 46_920), (0.4, 72, None)])
def test_conv_256_gamma_gives_spec_rank_and_count(gamma, rank, params):
  assert ranks.rank_for_gamma(CONV_256, gamma) == rank
  if params is not None:
    assert ranks.fedpara_param_count(CONV_256, rank) == params


def test_param_ratio_matches_authors_notebook_figure():
  rank = ranks.rank_for_param_ratio(CONV_256, 0.1)
  assert rank == 36
  assert ranks.fedpara_param_count(CONV_256, rank) == 60_192


@pytest.mark.parametrize('fan_in, fan_out', [(784, 200), (200, 200), (512, 10), (7, 1000)])
def test_dense_r_max_is_closed_form(fan_in, fan_out):
  expected = fan_in * fan_out // (2 * (fan_in + fan_out))
  assert ranks.r_max((fan_in, fan_out)) == expected
  assert ranks.r_min((fan_in, fan_out)) == math.ceil(math.sqrt(min(fan_in, fan_out)))


@pytest.mark.parametrize('shape', [(3, 3, 64, 128), (5, 5, 32, 48), (1, 1, 512, 512), (3, 100, 50)])
def test_conv_r_max_is_largest_rank_within_original_count(shape):
  upper = ranks.r_max(shape)
  original = math.prod(shape)
  assert ranks.fedpara_param_count(shape, upper) <= original
  assert ranks.fedpara_param_count(shape, upper + 1) > original


@pytest.mark.parametrize('shape', [(784, 200), (3, 3, 128, 256)])
def test_gamma_endpoints_are_r_min_and_r_max(shape):
  assert ranks.rank_for_gamma(shape, 0.0) == ranks.r_min(shape)
  assert ranks.rank_for_gamma(shape, 1.0) == ranks.r_max(shape)


def test_fedpara_and_lowrank_counts_follow_table():
  assert ranks.fedpara_param_count((100, 60), 5) == 2 * 5 * 160
  assert ranks.lowrank_param_count((100, 60), 10) == 10 * 160
  assert ranks.fedpara_param_count((3, 3, 16, 32), 4) == 2 * 4 * (32 + 16 + 4 * 9)
  assert ranks.lowrank_param_count((3, 3, 16, 32), 6) == 6 * (32 + 16 + 6 * 9)


@pytest.mark.parametrize('shape, fedpara_rank', [((512, 512), 34), (CONV_256, 30), ((3, 3, 64, 128), 12)])
def test_lowrank_matching_rank_does_not_exceed_fedpara_count(shape, fedpara_rank):
  inner = ranks.lowrank_rank_matching(shape, fedpara_rank)
  budget = ranks.fedpara_param_count(shape, fedpara_rank)
  assert ranks.lowrank_param_count(shape, inner) <= budget
  assert ranks.lowrank_param_count(shape, inner + 1) > budget
  if len(shape) == 2:
    assert inner == 2 * fedpara_rank


def test_tiny_layer_uses_r_max_and_warns_once():
  shape = (7, 6)  # r_min 3, r_max 1 (a shape no other test uses)
  assert ranks.r_min(shape) > ranks.r_max(shape)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    assert ranks.rank_for_gamma(shape, 0.5) == ranks.r_max(shape)
    assert ranks.rank_for_gamma(shape, 0.9) == ranks.r_max(shape)
  assert len([w for w in caught if 'cannot be compressed' in str(w.message)]) == 1


def test_layer_smaller_than_rank_one_is_refused():
  with pytest.raises(ValueError, match=r'too small to factorise'):
    ranks.rank_for_gamma((512, 1), 0.5)


@pytest.mark.parametrize('gamma', [-0.1, 1.5, 'high', True, float('nan')])
def test_bad_gamma_is_named(gamma):
  with pytest.raises(ValueError, match=r'gamma must be a number in \[0, 1\]; got'):
    ranks.rank_for_gamma((64, 64), gamma)


@pytest.mark.parametrize('ratio', [0, -1, 1.01])
def test_bad_param_ratio_is_named(ratio):
  with pytest.raises(ValueError, match=r'param_ratio must be a number in \(0, 1\]'):
    ranks.rank_for_param_ratio((64, 64), ratio)
