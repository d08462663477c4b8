"""``python -m reranker_bench``: the ``reranker-bench`` command (how the reference server is launched)."""

from .cli import main

raise SystemExit(main())
