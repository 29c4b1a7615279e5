"""absl-flag binaries, data loaders and the model zoo of fedpara-tff.

TensorFlow reads `TF_CPP_MIN_LOG_LEVEL` once, when it loads, and prints its C++ start-up logs
unless it is set: the package gives it its quiet default (3, when unset) here, before any of its
modules loads TensorFlow, whatever that module imports first (`fedpara_tff.runtime` does the
same for library users).
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
