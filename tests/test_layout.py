"""The package layout as users meet it: light imports, a lazy root, contracts in force."""

from __future__ import annotations

import subprocess
import sys

import pytest

import meshroom

HEAVY = ("sqlalchemy", "alembic", "quart", "hypercorn", "meshroom.server", "meshroom.store.sql")


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return set(result.stdout.split())


@pytest.mark.parametrize(
    ("statement", "forbidden"),
    [
        ("import meshroom.protocol", ("trio", "wsproto", *HEAVY)),
        ("import meshroom.client", HEAVY),
        ("import meshroom.core", HEAVY),
        ("import meshroom", ("trio", *HEAVY)),
        # The webhook worker's HTTP client is for `meshroom serve`, not one-shot commands.
        ("import meshroom.cli", ("httpx", "meshroom.webhooks.delivery")),
    ],
)
def test_an_import_loads_only_what_it_needs(statement: str, forbidden: tuple[str, ...]) -> None:
    loaded = _loaded_after(statement)
    assert sorted(loaded.intersection(forbidden)) == []


def test_the_root_package_exposes_its_public_names_lazily() -> None:
    loaded = _loaded_after("import meshroom; meshroom.Role")
    assert "meshroom.roles" in loaded and "meshroom.server" not in loaded
    for name in meshroom.__all__:
        assert getattr(meshroom, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        meshroom.Nope  # noqa: B018


def test_the_layering_contracts_hold() -> None:
    lint = [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()"]
    result = subprocess.run([*lint, "--no-cache"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "0 broken" in result.stdout
