"""The README's Python examples run as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / 'README.md'


def test_readme_python_examples_run():
  blocks = re.findall(r'```python\n(.*?)```', README.read_text(encoding='utf-8'), re.S)
  assert blocks, 'README has no python example'
  for block in blocks:
    exec(compile(block, 'README.md', 'exec'), {})  # pylint: disable=exec-used
