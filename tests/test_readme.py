"""The README stays true: its configuration table is the settings table."""

import re
from pathlib import Path

from meshroom.config import settings_table

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_configuration_table_lists_every_setting_as_defined() -> None:
    text = README.read_text()
    match = re.search(
        r"<!-- settings-table:start -->\n(.*?)\n<!-- settings-table:end -->", text, re.S
    )
    assert match, "README lost its settings-table markers"
    assert match.group(1) == settings_table(), (
        "README's configuration table is stale: regenerate it with `python -m meshroom.config`"
    )
