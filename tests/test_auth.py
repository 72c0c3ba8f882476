"""Meeting access tokens: minting and verification, and the attacks verification must refuse."""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from meshroom.auth import Claims, TokenError, TokenKeys, generate_secret, mint_token, verify_token
from meshroom.roles import Role

SECRET = "s" * 48
KEYS = TokenKeys.shared_secret(SECRET)
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def mint(keys: TokenKeys = KEYS, **overrides: Any) -> str:
    options: dict[str, Any] = {
        "meeting_id": "m-1",
        "emp_id": "alice",
        "display_name": "Alice",
        "role": Role.HOST,
    }
    options.update(overrides)
    return mint_token(keys, **options)


def payload(**overrides: Any) -> dict[str, Any]:
    """A complete, valid set of claims, to be altered and signed by hand."""
    now = dt.datetime.now(dt.UTC)
    claims: dict[str, Any] = {
        "mid": "m-1",
        "sub": "alice",
        "name": "Alice",
        "role": "PARTICIPANT",
        "iat": now,
        "nbf": now,
        "exp": now + dt.timedelta(hours=1),
        "jti": "j-1",
        "aud": "meshroom",
        "iss": "meshroom",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not ...}


def sign(claims: dict[str, Any], key: str | bytes = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def refused(token: str, keys: TokenKeys = KEYS) -> str:
    with pytest.raises(TokenError) as info:
        verify_token(keys, token)
    return str(info.value)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# Round trip


def test_mint_then_verify_round_trip():
    token = mint(now=NOW, ttl=dt.timedelta(minutes=30))
    claims = verify_token(KEYS, token)
    assert claims == Claims(
        meeting_id="m-1",
        emp_id="alice",
        display_name="Alice",
        role=Role.HOST,
        jti=claims.jti,
        issued_at=NOW,
        expires_at=NOW + dt.timedelta(minutes=30),
    )
    assert len(claims.jti) == 32


def test_every_token_has_its_own_jti():
    assert verify_token(KEYS, mint()).jti != verify_token(KEYS, mint()).jti


@pytest.mark.parametrize("role", list(Role))
def test_every_role_round_trips(role):
    assert verify_token(KEYS, mint(role=role)).role is role


def test_minted_claims_on_the_wire():
    claims = jwt.decode(mint(), SECRET, algorithms=["HS256"], audience="meshroom")
    assert {"mid", "sub", "name", "role", "iat", "nbf", "exp", "jti", "aud", "iss"} <= set(claims)
    assert jwt.get_unverified_header(mint())["alg"] == "HS256"


def test_custom_audience_and_issuer():
    keys = TokenKeys.shared_secret(SECRET, audience="intranet", issuer="hr-app")
    assert verify_token(keys, mint(keys)).emp_id == "alice"
    refused(mint(keys), KEYS)
    assert refused(mint(TokenKeys.shared_secret(SECRET, audience="intranet")), keys) == (
        "token was issued by an unknown issuer"
    )
    assert refused(mint(TokenKeys.shared_secret(SECRET, issuer="hr-app")), keys) == (
        "token was issued for another audience"
    )


def test_name_defaults_to_the_employee_id():
    assert verify_token(KEYS, sign(payload(name=...))).display_name == "alice"


# Time


def test_expired_token_is_refused():
    token = mint(now=NOW - dt.timedelta(hours=3), ttl=dt.timedelta(hours=1))
    assert refused(token) == "token has expired"


def test_expiry_within_leeway_is_accepted():
    token = sign(payload(exp=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=2)))
    assert verify_token(KEYS, token).emp_id == "alice"


def test_not_yet_valid_token_is_refused():
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)
    token = sign(payload(nbf=later))
    assert refused(token) == "token is not valid yet"


def test_token_issued_in_the_future_is_refused():
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)
    assert refused(mint(now=later)) == "token is not valid yet"


@pytest.mark.parametrize("claim", ["exp", "iat"])
def test_absurd_timestamps_are_refused_not_a_crash(claim):
    refused(sign(payload(**{claim: 10**20})))
    refused(sign(payload(**{claim: "tomorrow"})))


# Audience and issuer


def test_wrong_audience_is_refused():
    assert refused(sign(payload(aud="another-app"))) == "token was issued for another audience"


def test_wrong_issuer_is_refused():
    assert refused(sign(payload(iss="evil"))) == "token was issued by an unknown issuer"


# Tampering


def test_tampered_payload_is_refused():
    header, body, signature = mint(role=Role.PARTICIPANT).split(".")
    claims = json.loads(unb64(body))
    claims["role"] = "HOST"
    forged = ".".join([header, b64(json.dumps(claims).encode()), signature])
    assert refused(forged) == "token signature is invalid"


def test_tampered_signature_is_refused():
    header, body, signature = mint().split(".")
    raw = bytearray(unb64(signature))
    raw[0] ^= 0xFF
    assert refused(".".join([header, body, b64(bytes(raw))])) == "token signature is invalid"


def test_signature_with_another_secret_is_refused():
    assert refused(sign(payload(), key="t" * 48)) == "token signature is invalid"


@pytest.mark.parametrize("junk", ["", "abc", "a.b.c", "a.b", "....", "ey.ey.ey", "\x00" * 20])
def test_garbage_is_malformed(junk):
    assert refused(junk) == "token is malformed"


def test_alg_none_token_is_refused():
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = b64(json.dumps(payload(iat=..., nbf=..., exp=...) | {"exp": 4102444800}).encode())
    for signature in ("", b64(b"x")):
        message = refused(f"{header}.{body}.{signature}")
        assert message in ("token is signed with a refused algorithm", "token is malformed")


@pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
def test_other_hmac_algorithm_than_configured_is_refused(algorithm):
    keys = TokenKeys.shared_secret("k" * 64)
    message = refused(sign(payload(), key="k" * 64, algorithm=algorithm), keys)
    assert message == "token is signed with a refused algorithm"


# Asymmetric keys


def rsa_pems() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def ed25519_pems() -> tuple[bytes, bytes]:
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[bytes, bytes]:
    return rsa_pems()


def test_rs256_mint_and_verify(rsa_keys):
    private, public = rsa_keys
    signer = TokenKeys("RS256", verify_key=public, signing_key=private)
    verifier = TokenKeys("RS256", verify_key=public, signing_key=None)
    assert verify_token(verifier, mint(signer)).role is Role.HOST


def test_an_asymmetric_verify_key_is_parsed_once_not_for_every_token(monkeypatch):
    algorithm = type(jwt.algorithms.get_default_algorithms()["RS256"])
    prepare = algorithm.prepare_key
    pems_parsed = []

    def counting(self: Any, key: Any) -> Any:
        if isinstance(key, (str, bytes)):
            pems_parsed.append(key)
        return prepare(self, key)

    monkeypatch.setattr(algorithm, "prepare_key", counting)
    private, public = rsa_pems()  # a key of its own: no earlier parse of it is cached
    signer = TokenKeys("RS256", verify_key=public, signing_key=private)
    verifier = TokenKeys("RS256", verify_key=public, signing_key=None)
    for _ in range(3):
        assert verify_token(verifier, mint(signer)).role is Role.HOST
    assert pems_parsed.count(public) == 1


def test_rs256_token_from_another_key_is_refused(rsa_keys):
    _private, public = rsa_keys
    other_private, _ = rsa_pems()
    verifier = TokenKeys("RS256", verify_key=public, signing_key=None)
    forged = sign(payload(), key=other_private, algorithm="RS256")
    assert refused(forged, verifier) == "token signature is invalid"


def test_an_unknown_key_id_does_not_select_another_key(rsa_keys):
    """meshroom verifies with its one configured key: a `kid` naming some other key
    changes nothing, so a token signed by that other key is refused."""
    _private, public = rsa_keys
    other_private, _ = rsa_pems()
    verifier = TokenKeys("RS256", verify_key=public, signing_key=None)
    forged = jwt.encode(
        payload(), other_private, algorithm="RS256", headers={"kid": "rotated-2031"}
    )
    assert refused(forged, verifier) == "token signature is invalid"


def test_verify_only_keys_cannot_mint(rsa_keys):
    verifier = TokenKeys("RS256", verify_key=rsa_keys[1], signing_key=None)
    with pytest.raises(TokenError, match="no signing key"):
        mint(verifier)


def test_algorithm_confusion_hs256_with_public_key_as_secret_is_refused(rsa_keys):
    _private, public = rsa_keys
    verifier = TokenKeys("RS256", verify_key=public, signing_key=None)
    # PyJWT refuses to HMAC with a PEM key, so forge the HS256 signature by hand.
    import hashlib
    import hmac

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = payload(iat=..., nbf=..., exp=...) | {"exp": 4102444800, "role": "HOST"}
    body = b64(json.dumps(claims).encode())
    mac = hmac.new(public, f"{header}.{body}".encode(), hashlib.sha256).digest()
    forged = f"{header}.{body}.{b64(mac)}"
    assert refused(forged, verifier) == "token is signed with a refused algorithm"


def test_eddsa_mint_and_verify():
    private, public = ed25519_pems()
    signer = TokenKeys("EdDSA", verify_key=public, signing_key=private)
    claims = verify_token(TokenKeys("EdDSA", verify_key=public, signing_key=None), mint(signer))
    assert (claims.emp_id, claims.role) == ("alice", Role.HOST)
    other_private, _ = ed25519_pems()
    forged = sign(payload(), key=other_private, algorithm="EdDSA")
    assert refused(forged, signer) == "token signature is invalid"


def test_eddsa_verifier_refuses_an_rs256_token(rsa_keys):
    _private, public = ed25519_pems()
    verifier = TokenKeys("EdDSA", verify_key=public, signing_key=None)
    token = sign(payload(), key=rsa_keys[0], algorithm="RS256")
    assert refused(token, verifier) == "token is signed with a refused algorithm"


# Claims


@pytest.mark.parametrize("claim", ["exp", "iat", "sub", "mid", "role", "jti", "aud", "iss"])
def test_missing_claim_is_refused(claim):
    message = refused(sign(payload(**{claim: ...})))
    assert claim in message or message == "token is malformed"


@pytest.mark.parametrize("claim", ["mid", "sub", "role", "jti"])
def test_missing_meshroom_claim_is_named(claim):
    assert refused(sign(payload(**{claim: ...}))) == f"token lacks the {claim!r} claim"


@pytest.mark.parametrize("role", ["ADMIN", "host", "", None, 1, ["HOST"]])
def test_bad_role_is_refused(role):
    message = refused(sign(payload(role=role)))
    assert "role" in message or message == "token is malformed"


@pytest.mark.parametrize(
    "claims",
    [
        {"mid": ""},
        {"mid": 5},
        {"mid": None},
        {"name": ""},
        {"name": ["A"]},
        {"sub": ""},
        {"sub": "x" * 129},
        {"name": "n" * 201},
    ],
)
def test_bad_identity_claims_are_refused(claims):
    refused(sign(payload(**claims)))


def test_longest_identity_claims_pass():
    claims = verify_token(KEYS, sign(payload(sub="x" * 128, name="n" * 200)))
    assert (len(claims.emp_id), len(claims.display_name)) == (128, 200)


# Keys


@pytest.mark.parametrize("secret", ["", "short", "x" * 31])
def test_secret_shorter_than_32_bytes_is_refused(secret):
    with pytest.raises(ValueError, match="at least 32 bytes"):
        TokenKeys.shared_secret(secret)
    with pytest.raises(ValueError, match="at least 32 bytes"):
        TokenKeys("HS512", verify_key=secret.encode(), signing_key=secret.encode())


def test_secret_of_32_bytes_is_accepted():
    keys = TokenKeys.shared_secret("x" * 32)
    assert verify_token(keys, mint(keys)).emp_id == "alice"


@pytest.mark.parametrize("algorithm", ["none", "HS1", "RS1", "", "hs256"])
def test_unsupported_algorithm_is_refused(algorithm):
    with pytest.raises(ValueError, match="unsupported JWT algorithm"):
        TokenKeys(algorithm, verify_key=SECRET, signing_key=SECRET)


def test_generated_secret_is_long_enough_and_random():
    first, second = generate_secret(), generate_secret()
    assert first != second
    assert len(first.encode()) >= 32
    TokenKeys.shared_secret(first)


# Claims of the wrong JSON type in a correctly signed token (issue 11 #6): refused with
# TokenError (AUTH_FAILED), never another exception (which closed the connection 1011).

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# Each class of value equally likely: times as strings of digits (PyJWT lets those
# through), other scalars, and arrays and objects.
claim_values = st.one_of(
    st.integers(min_value=0, max_value=2**40).map(str), json_scalars, json_values
)
CLAIMS = ["mid", "sub", "name", "role", "iat", "nbf", "exp", "jti", "aud", "iss"]


def _signed(claims: dict[str, Any]) -> str:
    # json.dumps writes NaN and Infinity (as PyJWT's json.loads reads them back).
    body = b64(json.dumps(claims, default=str).encode())
    header = b64(b'{"alg":"HS256","typ":"JWT"}')
    signing_input = f"{header}.{body}".encode()
    return f"{header}.{body}.{b64(hmac.digest(SECRET.encode(), signing_input, 'sha256'))}"


def _valid_claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "mid": "m-1", "sub": "alice", "name": "Alice", "role": "PARTICIPANT",
        "iat": now, "nbf": now, "exp": now + 3600, "jti": "j-1", "aud": "meshroom",
        "iss": "meshroom",
    }  # fmt: skip
    claims.update(overrides)
    return claims


def test_the_hand_signed_token_is_valid_as_it_is() -> None:
    assert verify_token(KEYS, _signed(_valid_claims())).emp_id == "alice"


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(CLAIMS), claim_values)
def test_any_json_value_in_any_claim_is_verified_or_refused_never_a_crash(
    claim: str, value: Any
) -> None:
    try:
        claims = verify_token(KEYS, _signed(_valid_claims(**{claim: value})))
    except TokenError:
        return
    assert isinstance(claims, Claims)


@pytest.mark.parametrize("claim", ["iat", "nbf", "exp"])
@pytest.mark.parametrize(
    "value",
    ["1700000000", str(2**40), "tomorrow", {"t": 1}, [1700000000], True, False, "NaN", []],
    ids=repr,
)
def test_a_time_claim_of_the_wrong_type_is_refused_and_named(claim: str, value: Any) -> None:
    message = refused(_signed(_valid_claims(**{claim: value})))
    assert message == f"token claim {claim!r} must be a number of seconds since the epoch"


@pytest.mark.parametrize("claim", ["iat", "exp"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=repr)
def test_a_time_claim_that_is_not_finite_is_refused_and_named(claim: str, value: float) -> None:
    message = refused(_signed(_valid_claims(**{claim: value})))
    assert message == f"token claim {claim!r} must be a number of seconds since the epoch"


def test_a_fractional_numericdate_is_accepted() -> None:
    # RFC 7519 §2: a NumericDate may be non-integer.
    now = time.time()
    claims = verify_token(KEYS, _signed(_valid_claims(iat=now - 0.5, exp=now + 60.25)))
    assert claims.expires_at.timestamp() == pytest.approx(now + 60.25)


@pytest.mark.parametrize(
    "jti", ["", "j", 7, 1.5, True, {"a": [1, {"b": None}]}, [1, "2"], [], {}], ids=repr
)
def test_a_jti_of_any_json_type_is_accepted(jti: Any) -> None:
    # protocol.md §3.2: jti is required, of any type, and not tracked.
    claims = verify_token(KEYS, _signed(_valid_claims(jti=jti)))
    assert claims.emp_id == "alice" and isinstance(claims.jti, str)


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"sub": 5}, "token claims mid, sub and name must be non-empty strings"),
        ({"sub": ["alice"]}, "token claims mid, sub and name must be non-empty strings"),
        ({"mid": {"id": "m-1"}}, "token claims mid, sub and name must be non-empty strings"),
        ({"role": ["HOST"]}, "token role must be one of HOST, COHOST, PARTICIPANT"),
        ({"role": {"HOST": 1}}, "token role must be one of HOST, COHOST, PARTICIPANT"),
    ],
)
def test_identity_claims_of_the_wrong_type_are_refused_and_named(
    claims: dict[str, Any], message: str
) -> None:
    assert refused(_signed(_valid_claims(**claims))) == message


# The HS* fast path (meshroom.auth.tokens._verified_hmac_payload): it may only accept
# what PyJWT accepts, with the same payload; everything else goes to PyJWT.


def _pyjwt_payload(keys: TokenKeys, token: str) -> dict[str, Any] | None:
    from meshroom.auth.tokens import _DECODE_OPTIONS

    try:
        return jwt.decode(  # type: ignore[no-any-return]
            token,
            keys.verify_key,
            algorithms=[keys.algorithm],
            audience=keys.audience,
            issuer=keys.issuer,
            options=_DECODE_OPTIONS,  # type: ignore[arg-type]
        )
    except (jwt.InvalidTokenError, TypeError, ValueError):
        return None


def _fast_payload(token: str, keys: TokenKeys = KEYS) -> dict[str, Any] | None:
    from meshroom.auth.tokens import _verified_hmac_payload

    return _verified_hmac_payload(keys, token)


def _hand_signed(header: dict[str, Any] | bytes, claims: dict[str, Any] | bytes) -> str:
    raw_header = header if isinstance(header, bytes) else json.dumps(header).encode()
    raw_claims = claims if isinstance(claims, bytes) else json.dumps(claims).encode()
    signing_input = f"{b64(raw_header)}.{b64(raw_claims)}"
    signature = hmac.digest(SECRET.encode(), signing_input.encode(), "sha256")
    return f"{signing_input}.{b64(signature)}"


def test_a_minted_hs256_token_takes_the_fast_path(monkeypatch) -> None:
    token = mint(role=Role.PARTICIPANT)
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: pytest.fail("PyJWT was asked"))
    assert verify_token(KEYS, token).emp_id == "alice"


@pytest.mark.parametrize(
    "token",
    [
        _hand_signed({"alg": "HS256", "typ": "JWT", "kid": "k1"}, _valid_claims()),
        _hand_signed({"alg": "HS256", "crit": ["b64"], "b64": False}, _valid_claims()),
        _hand_signed({"alg": "HS384"}, _valid_claims()),
        _hand_signed({"alg": "none"}, _valid_claims()),
        _hand_signed(b"[1]", _valid_claims()),
        _hand_signed({"alg": "HS256"}, b"[1]"),
        _hand_signed({"alg": "HS256"}, b"{not json"),
        _hand_signed({"alg": "HS256"}, _valid_claims(aud=["other"])),
        _hand_signed({"alg": "HS256"}, _valid_claims(aud=[1, "meshroom"])),
        _hand_signed({"alg": "HS256"}, _valid_claims(aud={"meshroom": 1})),
        _hand_signed({"alg": "HS256"}, _valid_claims(iss=["meshroom"])),
        _hand_signed({"alg": "HS256"}, _valid_claims(iss="other")),
        _hand_signed({"alg": "HS256"}, _valid_claims(jti=None)),
        _hand_signed({"alg": "HS256"}, {k: v for k, v in _valid_claims().items() if k != "aud"}),
        mint() + "=",
        mint().replace(".", "=.", 1),
        mint() + ".",
        mint()[:-2],
        "é" + mint(),
        mint(TokenKeys.shared_secret("t" * 48)),
    ],
    ids=lambda t: t[:12],
)
def test_the_fast_path_leaves_anything_unusual_to_pyjwt(token: str) -> None:
    assert _fast_payload(token) is None
    # What PyJWT says stays the answer: the same claims, or the same refusal.
    expected = _pyjwt_payload(KEYS, token)
    if expected is None:
        with pytest.raises(TokenError):
            verify_token(KEYS, token)


def test_the_fast_path_accepts_an_audience_list_as_pyjwt_does() -> None:
    token = _hand_signed({"alg": "HS256"}, _valid_claims(aud=["other", "meshroom"]))
    assert (
        _fast_payload(token)
        == _pyjwt_payload(KEYS, token)
        == _valid_claims(aud=["other", "meshroom"])
    )


@settings(max_examples=500, deadline=None)
@given(
    position=st.integers(min_value=0, max_value=10_000),
    replacement=st.sampled_from(list("AZaz09-_.=+/ ")) | st.text(max_size=2),
    delete=st.booleans(),
)
def test_a_mangled_token_is_accepted_by_the_fast_path_only_if_pyjwt_accepts_it(
    position: int, replacement: str, delete: bool
) -> None:
    token = mint()
    at = position % (len(token) + 1)
    mangled = token[:at] + replacement + token[at + (1 if delete else 0) :]
    fast = _fast_payload(mangled)
    if fast is not None:
        assert fast == _pyjwt_payload(KEYS, mangled)


@pytest.mark.parametrize("algorithm", ["HS256", "HS384", "HS512"])
def test_the_fast_path_verifies_every_hmac_algorithm(algorithm: str) -> None:
    keys = TokenKeys(algorithm, "k" * 64, "k" * 64)
    token = mint(keys)
    assert _fast_payload(token, keys) == _pyjwt_payload(keys, token) is not None
    other = TokenKeys(algorithm, "q" * 64, "q" * 64)
    assert _fast_payload(token, other) is None
