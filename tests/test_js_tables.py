"""meshroom.js carries copies of the protocol's tables; they must equal the Python ones."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from meshroom.protocol import CloseCode, ErrorCode
from meshroom.roles import Action, Role, may

MESHROOM_JS = Path(__file__).parent.parent / "meshroom" / "static" / "meshroom.js"

PROBE = """
const js = await import(process.argv[1]);
const roles = Object.values(js.Role);
const actions = %s;
const matrix = {};
for (const actor of roles) for (const action of actions) {
  matrix[`${actor} ${action}`] = js.may(actor, action);
  for (const target of roles) {
    matrix[`${actor} ${action} ${target}`] = js.may(actor, action, target);
  }
}
console.log(JSON.stringify({closeCodes: js.CloseCode, roles, matrix, errorCodes: js.ErrorCode}));
"""


@pytest.fixture(scope="module")
def js_tables() -> dict:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI"):
            pytest.fail("node is needed to check meshroom.js (it is on every CI machine)")
        pytest.skip("node is not installed")
    actions = json.dumps([a.value for a in Action])
    result = subprocess.run(
        [node, "--input-type=module", "-e", PROBE % actions, MESHROOM_JS.as_uri()],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return json.loads(result.stdout)


def test_close_codes_are_the_protocols(js_tables):
    assert js_tables["closeCodes"] == {code.name: code.value for code in CloseCode}


def test_error_codes_are_the_protocols(js_tables):
    assert js_tables["errorCodes"] == {code.name: code.value for code in ErrorCode}


def test_the_permission_matrix_is_the_servers(js_tables):
    assert js_tables["roles"] == [role.value for role in Role]
    expected = {}
    for actor in Role:
        for action in Action:
            expected[f"{actor} {action}"] = may(actor, action)
            for target in Role:
                expected[f"{actor} {action} {target}"] = may(actor, action, target)
    assert js_tables["matrix"] == expected
