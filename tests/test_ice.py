"""ICE servers in the join snapshot, and TURN REST credentials checked independently."""

from __future__ import annotations

import base64
import hashlib
import hmac

from meshroom.ice import DEFAULT_STUN_URLS, IceConfig, turn_credentials


def expected_credential(secret: str, username: str) -> str:
    # coturn's use-auth-secret: base64(HMAC-SHA1(secret, username)), standard alphabet.
    mac = hmac.HMAC(secret.encode("utf-8"), username.encode("utf-8"), "sha1").digest()
    return base64.standard_b64encode(mac).decode("ascii")


def test_turn_credentials_follow_the_rest_api_convention():
    username, credential = turn_credentials("s3cret", "emp-42", 600, now=1_700_000_000.7)
    assert username == "1700000600:emp-42"
    assert credential == expected_credential("s3cret", "1700000600:emp-42")
    assert len(base64.b64decode(credential)) == hashlib.sha1().digest_size


def test_turn_credentials_known_values():
    # Computed with openssl, outside Python:
    #   printf '%s' '1600000000:alice' | openssl dgst -sha1 -hmac k -binary | base64
    assert turn_credentials("k", "alice", 0, now=1_600_000_000) == (
        "1600000000:alice",
        "MeOljUJv32gZfodkyxD2HwAlzeE=",
    )
    assert turn_credentials("s3cret", "emp-42", 600, now=1_700_000_000) == (
        "1700000600:emp-42",
        "RJ+bEKoI6cvqLKm/RBfJjU642Zo=",
    )


def test_turn_credentials_default_to_the_current_time(monkeypatch):
    monkeypatch.setattr("meshroom.ice.time.time", lambda: 1000.0)
    assert turn_credentials("x", "bob", 3600)[0] == "4600:bob"


def test_employee_ids_with_colons_and_unicode():
    username, credential = turn_credentials("sëcret", "a:b:ç", 10, now=0)
    assert username == "10:a:b:ç"
    assert credential == expected_credential("sëcret", "10:a:b:ç")


def test_default_config_is_google_stun_only():
    assert IceConfig().servers_for("alice") == [{"urls": list(DEFAULT_STUN_URLS)}]


def test_no_servers_at_all():
    assert IceConfig(stun_urls=()).servers_for("alice") == []


def test_turn_with_a_shared_secret_issues_per_peer_credentials():
    config = IceConfig(
        stun_urls=("stun:stun.example:3478",),
        turn_urls=("turn:turn.example:3478", "turns:turn.example:5349"),
        turn_secret="shh",
        turn_ttl_seconds=120,
    )
    servers = config.servers_for("carol", now=5000)
    assert servers == [
        {"urls": ["stun:stun.example:3478"]},
        {
            "urls": ["turn:turn.example:3478", "turns:turn.example:5349"],
            "username": "5120:carol",
            "credential": expected_credential("shh", "5120:carol"),
        },
    ]
    assert config.servers_for("dave", now=5000)[1]["username"] == "5120:dave"


def test_turn_with_static_credentials():
    config = IceConfig(stun_urls=(), turn_urls=("turn:t",), turn_username="u", turn_credential="p")
    assert config.servers_for("x") == [{"urls": ["turn:t"], "username": "u", "credential": "p"}]
    config = IceConfig(stun_urls=(), turn_urls=("turn:t",), turn_username="u")
    assert config.servers_for("x") == [{"urls": ["turn:t"], "username": "u", "credential": ""}]


def test_the_secret_wins_over_static_credentials():
    config = IceConfig(
        stun_urls=(), turn_urls=("turn:t",), turn_secret="k", turn_username="u", turn_credential="p"
    )
    (server,) = config.servers_for("e", now=0)
    assert server["username"] == "3600:e"


def test_turn_without_credentials():
    assert IceConfig(stun_urls=(), turn_urls=("turn:t",)).servers_for("x") == [{"urls": ["turn:t"]}]
