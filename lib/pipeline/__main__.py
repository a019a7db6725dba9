"""``python -m lib.pipeline``: the reproduce runner's command line (see ``lib.pipeline.runner``)."""
from lib.pipeline.runner import main

raise SystemExit(main())
