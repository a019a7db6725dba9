"""``python -m lib.head_strength``: per-head strength of two models compared (see ``lib.head_strength.cli``)."""
from lib.head_strength.cli import main

raise SystemExit(main())
