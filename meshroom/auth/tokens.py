"""Meeting access tokens: JWTs minted for one employee in one meeting.

Claims: ``mid`` (meeting id), ``sub`` (employee id), ``name`` (display name),
``role`` (HOST / COHOST / PARTICIPANT), ``exp``, ``iat``, ``nbf``, ``jti``,
``aud`` and ``iss``. Verification pins a single algorithm, so ``alg: none``
and HS/RS confusion are refused by construction.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import hashlib
import hmac
import json
import math
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any, Final

import jwt

from ..roles import Role

DEFAULT_AUDIENCE: Final = "meshroom"
DEFAULT_ISSUER: Final = "meshroom"
SYMMETRIC_ALGORITHMS: Final = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"}
)
MIN_SECRET_BYTES: Final = 32


class TokenError(Exception):
    """A token that must not be honoured. The message is safe to show the client."""


@dataclass(frozen=True, slots=True)
class Claims:
    meeting_id: str
    emp_id: str
    display_name: str
    role: Role
    jti: str
    issued_at: dt.datetime
    expires_at: dt.datetime


@dataclass(frozen=True, slots=True)
class TokenKeys:
    """What signs and verifies tokens.

    For HS* algorithms ``verify_key`` and ``signing_key`` are the shared secret.
    For asymmetric algorithms ``verify_key`` is the PEM public key and
    ``signing_key`` the PEM private key, or None when another application mints.
    """

    algorithm: str
    verify_key: str | bytes
    signing_key: str | bytes | None
    audience: str = DEFAULT_AUDIENCE
    issuer: str = DEFAULT_ISSUER
    leeway_seconds: float = 5.0

    def __post_init__(self) -> None:
        if self.algorithm not in SYMMETRIC_ALGORITHMS | ASYMMETRIC_ALGORITHMS:
            raise ValueError(f"unsupported JWT algorithm {self.algorithm!r}")
        if self.algorithm in SYMMETRIC_ALGORITHMS and len(self.verify_key) < MIN_SECRET_BYTES:
            raise ValueError(f"the JWT secret must be at least {MIN_SECRET_BYTES} bytes long")

    @classmethod
    def shared_secret(cls, secret: str, **options: Any) -> TokenKeys:
        return cls(algorithm="HS256", verify_key=secret, signing_key=secret, **options)


def generate_secret() -> str:
    return secrets.token_urlsafe(48)


def mint_token(
    keys: TokenKeys,
    *,
    meeting_id: str,
    emp_id: str,
    display_name: str,
    role: Role,
    ttl: dt.timedelta = dt.timedelta(hours=2),
    now: dt.datetime | None = None,
) -> str:
    """Sign an access token for one employee in one meeting."""
    if keys.signing_key is None:
        raise TokenError("no signing key is configured: tokens are minted by another application")
    issued = now or dt.datetime.now(dt.UTC)
    payload = {
        "mid": meeting_id,
        "sub": emp_id,
        "name": display_name,
        "role": Role(role).value,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl,
        "jti": uuid.uuid4().hex,
        "aud": keys.audience,
        "iss": keys.issuer,
    }
    return jwt.encode(payload, keys.signing_key, algorithm=keys.algorithm)


_REQUIRED: Final = ["exp", "iat", "sub", "mid", "role", "jti", "aud", "iss"]
# PyJWT checks no claim's type before using it (a string `exp` of digits passes, one of
# letters is "malformed", an object raises TypeError), and insists on a string `jti`
# and `sub`. Those checks are made here instead, with messages that name the claim.
_DECODE_OPTIONS: Final = {
    "require": _REQUIRED,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_jti": False,
    "verify_sub": False,
}
_TIME_CLAIMS: Final = ("iat", "nbf", "exp")
_ROLES: Final = frozenset(role.value for role in Role)


def _numeric_date(payload: dict[str, Any], claim: str) -> float | None:
    """A time claim as a finite number (RFC 7519 NumericDate: integer or not); None if absent."""
    value = payload.get(claim)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (isinstance(value, float) and not math.isfinite(value))  # NaN, Infinity
    ):
        raise TokenError(f"token claim {claim!r} must be a number of seconds since the epoch")
    return value


def verify_token(keys: TokenKeys, token: str) -> Claims:
    """Check signature, algorithm, expiry, audience and issuer; return the claims.

    Raises:
        TokenError: with a message that says what is wrong, never why a key failed.
    """
    payload = _verified_hmac_payload(keys, token)
    if payload is None:  # not the plain HS* token the fast path accepts: PyJWT decides
        payload = _decode_with_pyjwt(keys, token)
    return _claims(keys, payload)


def _decode_with_pyjwt(keys: TokenKeys, token: str) -> dict[str, Any]:
    try:
        payload: dict[str, Any] = jwt.decode(
            token,
            _verify_key(keys.algorithm, keys.verify_key),
            algorithms=[keys.algorithm],
            audience=keys.audience,
            issuer=keys.issuer,
            options=_DECODE_OPTIONS,  # type: ignore[arg-type]  # PyJWT types it as a TypedDict
        )
    except jwt.InvalidAudienceError:
        raise TokenError("token was issued for another audience") from None
    except jwt.InvalidIssuerError:
        raise TokenError("token was issued by an unknown issuer") from None
    except jwt.MissingRequiredClaimError as exc:
        raise TokenError(f"token lacks the {exc.claim!r} claim") from None
    except jwt.InvalidAlgorithmError:
        raise TokenError("token is signed with a refused algorithm") from None
    except jwt.InvalidSignatureError:
        raise TokenError("token signature is invalid") from None
    except jwt.InvalidTokenError:
        raise TokenError("token is malformed") from None
    return payload


@functools.lru_cache(maxsize=16)
def _verify_key(algorithm: str, key: str | bytes) -> Any:
    """An asymmetric verify key parsed once: PyJWT would parse the PEM again on every
    token (30-70 µs, on the event loop at every join). Anything that does not parse, and
    every HS* secret, is passed on as given, so PyJWT refuses or uses it as before."""
    if algorithm not in ASYMMETRIC_ALGORITHMS:
        return key
    try:
        return jwt.algorithms.get_default_algorithms()[algorithm].prepare_key(key)
    except Exception:  # PyJWT reports it, from decode, as it always did
        return key


def _claims(keys: TokenKeys, payload: dict[str, Any]) -> Claims:
    # The signature holds: from here on the claims are the issuer's, but their JSON types
    # are still whatever it wrote. Every check below refuses with TokenError, never a crash.
    iat, nbf, exp = (_numeric_date(payload, claim) for claim in _TIME_CLAIMS)
    if iat is None or exp is None:  # cannot be: both are required, so not null
        raise TokenError("token lacks the 'iat' or 'exp' claim")
    now = time.time()
    leeway = keys.leeway_seconds
    # PyJWT's own rules: expired at exp (minus leeway); not valid before nbf or iat.
    if exp <= now - leeway:
        raise TokenError("token has expired")
    if (nbf is not None and nbf > now + leeway) or iat > now + leeway:
        raise TokenError("token is not valid yet")

    meeting_id, emp_id, role = payload["mid"], payload["sub"], payload["role"]
    name = payload.get("name", emp_id)
    if not all(isinstance(v, str) and v for v in (meeting_id, emp_id, name)):
        raise TokenError("token claims mid, sub and name must be non-empty strings")
    if len(emp_id) > 128 or len(name) > 200:
        raise TokenError("token claims sub or name are too long")
    if not all(_storable(v) for v in (meeting_id, emp_id, name)):
        raise TokenError(
            "token claims mid, sub and name must not contain NUL characters or lone surrogates"
        )
    if not isinstance(role, str) or role not in _ROLES:
        raise TokenError(f"token role must be one of {', '.join(Role)}")
    try:
        issued_at = dt.datetime.fromtimestamp(iat, dt.UTC)
        expires_at = dt.datetime.fromtimestamp(exp, dt.UTC)
    except (OverflowError, ValueError, OSError):
        raise TokenError("token timestamps are out of range") from None
    return Claims(
        meeting_id=meeting_id,
        emp_id=emp_id,
        display_name=name,
        role=Role(role),
        jti=_jti_text(payload["jti"]),
        issued_at=issued_at,
        expires_at=expires_at,
    )


# The fast path for HS* tokens (every join verifies one, on the event loop). PyJWT
# spends ~0.2-0.3 ms on one, most of it generic work (options, a per-character
# alphabet check in Python, re-preparing the key); the HMAC itself is microseconds.
# The fast path only ever *accepts*: a token it does not find valid in every respect
# PyJWT checks goes to PyJWT, which refuses it with its usual error. So it is never
# more lenient than PyJWT, and every refusal reads as before.
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")  # base64url, unpadded: what mint_token writes
_HMAC_DIGESTS: Final = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
_PLAIN_HEADER_KEYS: Final = frozenset({"alg", "typ"})


@functools.lru_cache(maxsize=16)
def _hmac_key(algorithm: str, secret: str | bytes) -> bytes | None:
    """The secret as PyJWT would use it, or None where PyJWT would refuse it (a PEM or
    SSH public key given as an HMAC secret): those tokens all take PyJWT's path."""
    try:
        key: bytes = jwt.algorithms.get_default_algorithms()[algorithm].prepare_key(secret)
    except jwt.InvalidKeyError:
        return None
    return key


def _segment_bytes(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _verified_hmac_payload(keys: TokenKeys, token: str) -> dict[str, Any] | None:
    """The payload of a plain HS* token that PyJWT would accept as it is; else None."""
    digest = _HMAC_DIGESTS.get(keys.algorithm)
    if digest is None:
        return None
    key = _hmac_key(keys.algorithm, keys.verify_key)
    parts = token.split(".")
    if key is None or len(parts) != 3:
        return None
    for part in parts:
        if len(part) % 4 == 1 or not _SEGMENT.fullmatch(part):
            return None
    try:
        header = json.loads(_segment_bytes(parts[0]))
        if (
            type(header) is not dict
            or header.get("alg") != keys.algorithm
            or not header.keys() <= _PLAIN_HEADER_KEYS  # no kid, crit, b64…: PyJWT's job
        ):
            return None
        expected = hmac.new(key, f"{parts[0]}.{parts[1]}".encode("ascii"), digest).digest()
        if not hmac.compare_digest(expected, _segment_bytes(parts[2])):
            return None
        payload = json.loads(_segment_bytes(parts[1]))
    except (ValueError, binascii.Error, RecursionError):
        return None
    if type(payload) is not dict or any(payload.get(claim) is None for claim in _REQUIRED):
        return None
    audience = payload["aud"]
    if isinstance(audience, str):
        audience = [audience]
    if (
        type(audience) is not list
        or not all(isinstance(a, str) for a in audience)
        or keys.audience not in audience
        or type(payload["iss"]) is not str
        or payload["iss"] != keys.issuer
    ):
        return None
    return payload


def _storable(text: str) -> bool:
    """Whether a database can hold ``text``: the claims are written to one.

    PostgreSQL text cannot hold NUL, and no driver encodes a lone surrogate (which
    JSON's ``"\\ud800"`` decodes to) as UTF-8: either failed the join there, with 1011.
    """
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _jti_text(jti: object) -> str:
    """``jti`` may be any JSON value (protocol.md §3.2); Claims keeps it as text."""
    if isinstance(jti, str):
        return jti
    try:
        return json.dumps(jti, sort_keys=True)
    except (RecursionError, ValueError):
        return type(jti).__name__
