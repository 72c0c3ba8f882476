"""meshroom's load benchmarks: ``python -m bench SCENARIO [SIZES...]``. See bench/README.md."""
