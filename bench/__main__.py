"""``python -m bench``. Kept import-free: loader processes are spawned and re-import this module."""

if __name__ == "__main__":
    import sys

    from bench.cli import main

    sys.exit(main())
