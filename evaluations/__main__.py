"""``python3 -m evaluations run|study|analyze|config ...``, the same as the ``art-smoothing-eval`` command."""

import sys

from .cli import main

sys.exit(main())
