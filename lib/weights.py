"""Deprecated alias, kept for one release: ``python -m lib.weights`` is now ``python -m lib.models.weights``."""
if __name__ == "__main__":
    from lib.models.weights import main

    raise SystemExit(main())
