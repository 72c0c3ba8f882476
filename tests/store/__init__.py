"""Store-facing tests, run on every database backend (see conftest.py)."""
