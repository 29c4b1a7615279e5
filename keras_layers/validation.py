"""Checks of numeric arguments, with the one-line errors every module of the project gives.

A number here is a real Python or numpy number and never a bool (`True` is an int in Python, and
`learning_rate=True` is a mistake, not 1.0). Every message names the argument, what is allowed
and the value given, e.g. "lr_decay must be a number in (0, 1]; got 1.5."
"""

import math
import numbers


def is_number(value):
  """Whether `value` is a real number and not a bool."""
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _interval(low, high, low_closed, high_closed):
  if low is not None and high is not None:
    return f'in {"[" if low_closed else "("}{low:g}, {high:g}{"]" if high_closed else ")"}'
  if low is not None:
    return f'{">=" if low_closed else ">"} {low:g}'
  return f'{"<=" if high_closed else "<"} {high:g}'


def number(value, name, low=None, high=None, *, low_closed=True, high_closed=True,
           finite=False):
  """`value` as a float if it is a number in the interval; else a ValueError naming it.

  Args:
    value: the argument.
    name: its name in the message.
    low, high: the interval's ends (None: unbounded on that side).
    low_closed, high_closed: whether the ends belong to it.
    finite: refuse +-inf too (say "a finite number").
  """
  ok = is_number(value) and not math.isnan(value)
  if ok and low is not None:
    ok = value >= low if low_closed else value > low
  if ok and high is not None:
    ok = value <= high if high_closed else value < high
  if ok and finite:
    ok = math.isfinite(value)
  if not ok:
    kind = 'a finite number' if finite else 'a number'
    raise ValueError(f'{name} must be {kind} {_interval(low, high, low_closed, high_closed)}; '
                     f'got {value!r}.')
  return float(value)


def finite_at_least_zero(value, name):
  """`value` as a float if it is a finite number >= 0."""
  return number(value, name, 0.0, finite=True)


def finite_positive(value, name):
  """`value` as a float if it is a finite number > 0."""
  return number(value, name, 0.0, low_closed=False, finite=True)


def fraction(value, name, *, low_closed=True, high_closed=False):
  """`value` as a float if it is in the unit interval ([0, 1) by default)."""
  return number(value, name, 0.0, 1.0, low_closed=low_closed, high_closed=high_closed)


def is_integer(value, minimum=1):
  """Whether `value` is an integer (not a bool) >= `minimum`."""
  return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum


def integer(value, name, minimum=1):
  """`value` as an int if it is an integer (not a bool) >= `minimum`."""
  if not is_integer(value, minimum):
    raise ValueError(f'{name} must be an integer >= {minimum}; got {value!r}.')
  return int(value)


def one_of(value, name, allowed):
  """`value` if it is one of `allowed` (a tuple)."""
  if value not in allowed:
    raise ValueError(f'{name} must be one of {tuple(allowed)}; got {value!r}.')
  return value
