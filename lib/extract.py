"""Deprecated alias, kept for one release: ``python -m lib.extract`` is now ``python -m lib.activations``."""
if __name__ == "__main__":
    from lib.activations.cli import main

    raise SystemExit(main())
