"""``python -m reranker_serve`` is ``reranker-serve``."""

import sys

from .cli import main

sys.exit(main())
