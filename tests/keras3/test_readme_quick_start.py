"""The README's quick start (its one Python block: layers only) runs on the installed Keras."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[2] / 'README.md'


def test_the_readme_quick_start_runs_on_this_keras():
  if not README.exists():
    pytest.fail(f'{README} is missing: copy it beside the tests (scripts/install_test.sh does)')
  (block,) = re.findall(r'```python\n(.*?)```', README.read_text(encoding='utf-8'), re.S)
  namespace = {}
  exec(compile(block, 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  assert namespace['served'].count_params() == namespace['plain'].count_params()
