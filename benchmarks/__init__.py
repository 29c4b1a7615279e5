"""Speed and memory benchmarks of fedpara-tff (`make bench`): ratios measured in one run.

As in `experiments`, the package gives TensorFlow its quiet log default before any benchmark
loads it.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
