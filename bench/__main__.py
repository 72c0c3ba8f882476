"""``python -m bench``. Kept import-free: loader processes are spawned and re-import this module."""

if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["compare"]:
        from bench.compare import main as compare

        sys.exit(compare(sys.argv[2:]))
    if sys.argv[1:2] == ["cluster"]:
        from bench.cluster import main as cluster

        sys.exit(cluster(sys.argv[2:]))
    if sys.argv[1:2] == ["idle"]:
        from bench.idle import main as idle

        sys.exit(idle(sys.argv[2:]))
    from bench.cli import main

    sys.exit(main())
