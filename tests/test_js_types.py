"""meshroom.d.ts describes meshroom.js: a typed example compiles against it with tsc."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

PROJECT = Path(__file__).parent / "js-types"
TSC = PROJECT / "node_modules" / ".bin" / "tsc"


def test_the_typed_example_compiles_against_the_declarations():
    if not TSC.exists():
        if os.environ.get("CI"):
            pytest.fail("TypeScript is not installed: .ci/run runs npm ci in tests/js-types")
        pytest.skip("TypeScript is not installed (cd tests/js-types && npm ci)")
    result = subprocess.run(
        [str(TSC), "-p", str(PROJECT)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
