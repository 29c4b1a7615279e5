"""The experiment flagfiles shipped with the package, found from any working folder.

`--flagfile=NAME.cfg` (or `experiments/configs/NAME.cfg`) names a file of
`experiments/configs/`; when no such file exists where the path points, the
packaged one is used, so an installed `fedpara-train --flagfile=mnist5k_quick.cfg`
works outside the repository.
"""

import os
import sys

from absl import app
from absl import flags

from fedpara_tff import runtime

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs')


def resolve(argv):
  """`argv` with every `--flagfile=NAME.cfg` or `--flagfile=experiments/configs/NAME.cfg`
  that does not exist where it points replaced by the packaged file."""
  resolved = []
  for arg in argv:
    if arg.startswith('--flagfile='):
      path = arg[len('--flagfile='):]
      packaged = os.path.join(CONFIG_DIR, os.path.basename(path))
      # Only a bare name or experiments/configs/NAME means the packaged file; a path elsewhere
      # that does not exist stays as given, and absl names it.
      by_name = os.path.dirname(os.path.normpath(path)) in ('', os.path.join('experiments',
                                                                             'configs'))
      if by_name and not os.path.exists(path) and os.path.exists(packaged):
        arg = f'--flagfile={packaged}'
    resolved.append(arg)
  return resolved


def check_text(argv, program):
  """Refuses, in one line, a `--flagfile` that is not UTF-8 text (absl's error is a 30-line
  UnicodeDecodeError)."""
  for arg in argv:
    if not arg.startswith('--flagfile='):
      continue
    path = arg[len('--flagfile='):]
    try:
      with open(path, encoding='utf-8') as f:
        f.read()
    except UnicodeDecodeError as e:
      raise SystemExit(f'{program}: error: --flagfile={path} is not a text file ({e.reason} at '
                       f'byte {e.start}); a flagfile holds --name=value lines.') from None
    except OSError:
      pass   # absl names a missing or unreadable file itself


def no_positional(argv, program):
  """Refuses positional arguments in one line (absl's UsageError would print the whole help)."""
  if len(argv) > 1:
    raise SystemExit(f'{program}: error: unexpected positional arguments {argv[1:]}; every '
                     f'setting is a flag (--name=value), see --help.')


def names():
  """The packaged flagfiles, sorted."""
  return sorted(f for f in os.listdir(CONFIG_DIR) if f.endswith('.cfg'))


def run_main(main, load=None):
  """`absl.app.run(main)` on this process's arguments, flagfiles resolved.

  `load` (e.g. a function importing TensorFlow) runs once the flags parse and before absl's
  `app.run`, never for `--help` or a flag error. A binary that imports TensorFlow needs it: Keras
  2.14 first imported inside `app.run` builds functional models from graph tensors and refuses
  them ("Output tensors of a Sequential model must be the output of a TensorFlow `Layer`";
  docs/DESIGN.md, "Fast start").

  Two things `python -m` gets right and a console script (`fedpara-train`) does not, fixed here
  for both: `--help` lists the flags of the module whose `main` runs (absl lists those of the
  module named by `sys.argv[0]`, the console script's wrapper), and a run that ends during flag
  parsing (a bad flag, `--help`) prints no TFF `ServiceManager` traceback at exit
  (`fedpara_tff.runtime.quiet_teardown`). The help flags exit 0 (absl's exit 1).
  """
  if main.__module__ != '__main__':
    wrapper = sys.modules['__main__']   # absl's usage text is its docstring
    if wrapper.__doc__ is None:
      wrapper.__doc__ = sys.modules[main.__module__].__doc__
    for flag in flags.FLAGS.get_key_flags_for_module(main.__module__):
      flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  runtime.quiet_teardown()
  argv = resolve(sys.argv)
  module = main.__module__
  if module == '__main__':   # python -m experiments.NAME
    module = getattr(sys.modules['__main__'].__spec__, 'name', module)
  program = module.rsplit('.', 1)[-1]
  check_text(argv, program)
  try:
    if load is not None:
      app.define_help_flags()
      app.parse_flags_with_usage(argv)   # --help and flag errors exit here, before `load`
      load()
    app.run(main, argv=argv)
  except UnicodeDecodeError as e:   # a flagfile named inside another flagfile
    raise SystemExit(f'{program}: error: a flagfile is not text ({e.reason} at byte {e.start}); '
                     f'a flagfile holds --name=value lines.') from None
  except SystemExit as e:
    # absl's help flags exit 1 after printing the usage asked for: that is a success.
    if e.code == 1 and _raised_by_help_flag(e):
      raise SystemExit(0) from None
    raise


def _raised_by_help_flag(error):
  """True when `error` was raised while absl parsed --help, --helpshort, --helpfull or --helpxml."""
  help_flags = (app.HelpFlag, app.HelpfullFlag, app.HelpXMLFlag)
  trace = error.__traceback__
  while trace is not None:
    if isinstance(trace.tb_frame.f_locals.get('self'), help_flags):
      return True
    trace = trace.tb_next
  return False
