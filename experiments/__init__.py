"""absl-flag binaries, data loaders and the model zoo of fedpara-tff.

TensorFlow reads `TF_CPP_MIN_LOG_LEVEL` once, when it loads, and prints its C++ start-up logs
unless it is set: the package gives it its quiet default (3, when unset) here, before any of its
modules loads TensorFlow, whatever that module imports first (`fedpara_tff.runtime` does the
same for library users).
"""

import importlib.util
import os
import sys

# The [experiments] extra (it includes [tff]): without it, fail in one line naming it.
_MISSING = [m for m in ('tensorflow_federated', 'absl', 'matplotlib', 'tqdm', 'h5py')
            if importlib.util.find_spec(m) is None]
# The console scripts of setup.py: run as one of them, the refusal is one line and exit 1, no
# traceback (an ImportError there would print the wrapper's traceback above the line).
_CONSOLE_SCRIPTS = ('fedpara-train', 'fedpara-compare', 'fedpara-plot', 'fedpara-worker')
if _MISSING:
  _MESSAGE = (f'experiments needs the [experiments] extra, which is not installed (missing: '
              f'{", ".join(_MISSING)}): pip install "fedpara-tff[experiments]" on Python '
              f'3.9-3.11 (this is Python {sys.version_info[0]}.{sys.version_info[1]}).')
  if os.path.basename(sys.argv[0] if sys.argv else '') in _CONSOLE_SCRIPTS:
    raise SystemExit(f'{os.path.basename(sys.argv[0])}: error: {_MESSAGE}')
  raise ImportError(_MESSAGE) from None

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# The binaries list the factor options in their flags before Keras loads: `keras_layers` loads its
# layers on first use in this program (docs/DESIGN.md, "Fast start").
DEFER_KERAS_LAYERS = True
