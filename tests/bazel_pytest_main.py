"""Entry point of the Bazel `py_test` targets: runs pytest on the files given as arguments.

Exits non-zero when a test fails or when no test was collected (pytest's exit code 5).
"""

import os
import sys

import pytest

if __name__ == '__main__':
  os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider'] + sys.argv[1:]))
