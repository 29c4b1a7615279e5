"""The experiment flagfiles shipped with the package, found from any working folder.

`--flagfile=NAME.cfg` (or `experiments/configs/NAME.cfg`) names a file of
`experiments/configs/`; when no such file exists where the path points, the
packaged one is used, so an installed `fedpara-train --flagfile=mnist5k_quick.cfg`
works outside the repository.
"""

import os
import sys

from absl import app

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs')


def resolve(argv):
  """`argv` with every `--flagfile=PATH` that does not exist replaced by the packaged file."""
  resolved = []
  for arg in argv:
    if arg.startswith('--flagfile='):
      path = arg[len('--flagfile='):]
      packaged = os.path.join(CONFIG_DIR, os.path.basename(path))
      if not os.path.exists(path) and os.path.exists(packaged):
        arg = f'--flagfile={packaged}'
    resolved.append(arg)
  return resolved


def names():
  """The packaged flagfiles, sorted."""
  return sorted(f for f in os.listdir(CONFIG_DIR) if f.endswith('.cfg'))


def run_main(main):
  """`absl.app.run(main)` on this process's arguments, flagfiles resolved."""
  app.run(main, argv=resolve(sys.argv))
