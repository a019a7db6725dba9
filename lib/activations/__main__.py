"""``python -m lib.activations``: extract activations into a store (see ``lib.activations.cli``)."""
from lib.activations.cli import main

raise SystemExit(main())
