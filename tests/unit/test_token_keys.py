"""The token key set: the newest key signs, older keys verify until removed, unknown kids are refused; JWKS."""

from __future__ import annotations

import hashlib
import hmac
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import SecretStr

from common.settings import ApiSettings
from services.api.auth import (
    LEGACY_KID,
    SCOPE_READ,
    AuthenticationError,
    Jwks,
    KeySetError,
    KeySetFile,
    TokenService,
)
from tools import token as token_command

LEGACY = "legacy-secret-of-the-unit-tests-0123456789"


def _service(keys: Path, legacy: str | None = LEGACY, **kwargs: Any) -> TokenService:
    # reload_interval=0: every verify looks at the file, so a test sees its own rotate/remove at once.
    return TokenService(legacy, "oms", keys_file=keys, reload_interval=0, **kwargs)


def _kid(token: str) -> str | None:
    kid = jwt.get_unverified_header(token).get("kid")
    assert kid is None or isinstance(kid, str)
    return kid


def _claims(**overrides: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    claims: dict[str, Any] = {"sub": "u", "accounts": ["*"], "scopes": [SCOPE_READ], "iss": "oms", "iat": now}
    claims["exp"] = now + timedelta(minutes=5)
    claims.update(overrides)
    return claims


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    return tmp_path / "data" / "jwt-keys.json"


def test_legacy_secret_signs_while_the_key_set_is_empty(keys: Path) -> None:
    service = _service(keys)
    token = service.issue("u", ["*"], [SCOPE_READ])
    assert _kid(token) == LEGACY_KID
    assert service.verify(token).subject == "u"
    assert not keys.exists()


def test_the_newest_key_signs_and_older_keys_keep_verifying(keys: Path) -> None:
    service = _service(keys)
    before = service.issue("before", ["*"], [SCOPE_READ])
    first = KeySetFile(keys).rotate()
    signed_first = service.issue("first", ["*"], [SCOPE_READ])
    assert _kid(signed_first) == first.kid
    second = KeySetFile(keys).rotate()
    assert second.kid != first.kid
    signed_second = service.issue("second", ["*"], [SCOPE_READ])
    assert _kid(signed_second) == second.kid == service.signing_kid()
    for token, subject in ((before, "before"), (signed_first, "first"), (signed_second, "second")):
        assert service.verify(token).subject == subject
    # The signature really is the named key's: another key's secret does not verify it.
    assert jwt.decode(signed_second, second.secret, algorithms=["HS256"], issuer="oms")["sub"] == "second"
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(signed_second, first.secret, algorithms=["HS256"], issuer="oms")


def test_a_removed_key_is_refused(keys: Path) -> None:
    service = _service(keys)
    old = KeySetFile(keys).rotate()
    token = service.issue("u", ["*"], [SCOPE_READ])
    KeySetFile(keys).rotate()
    assert service.verify(token).subject == "u"
    KeySetFile(keys).remove(old.kid)
    with pytest.raises(AuthenticationError, match=f"unknown key id '{old.kid}'"):
        service.verify(token)
    with pytest.raises(KeySetError, match="no key"):
        KeySetFile(keys).remove(old.kid)


def test_an_unknown_kid_is_refused_even_when_signed_with_a_known_secret(keys: Path) -> None:
    key = KeySetFile(keys).rotate()
    token = jwt.encode(_claims(), key.secret, algorithm="HS256", headers={"kid": "nobody"})
    with pytest.raises(AuthenticationError, match="unknown key id 'nobody'"):
        _service(keys).verify(token)
    huge = jwt.encode(_claims(), key.secret, algorithm="HS256", headers={"kid": "x" * 5000})
    with pytest.raises(AuthenticationError) as raised:
        _service(keys).verify(huge)
    assert len(str(raised.value)) < 200


def test_legacy_tokens_without_kid_verify_against_the_legacy_secret(keys: Path) -> None:
    KeySetFile(keys).rotate()
    without_kid = jwt.encode(_claims(sub="old"), LEGACY, algorithm="HS256")
    assert _kid(without_kid) is None
    assert _service(keys).verify(without_kid).subject == "old"
    # A key-set key does not stand in for the legacy secret, nor the other way round.
    newest = KeySetFile(keys).read().newest
    assert newest is not None
    with pytest.raises(AuthenticationError, match="invalid token"):
        _service(keys).verify(jwt.encode(_claims(), newest.secret, algorithm="HS256"))
    with pytest.raises(AuthenticationError, match="invalid token"):
        _service(keys).verify(jwt.encode(_claims(), LEGACY, algorithm="HS256", headers={"kid": newest.kid}))


def test_legacy_tokens_are_refused_once_the_legacy_secret_is_retired(keys: Path) -> None:
    legacy_token = _service(keys).issue("u", ["*"], [SCOPE_READ])
    without_kid = jwt.encode(_claims(), LEGACY, algorithm="HS256")
    retired = _service(keys, legacy=None)
    for token in (legacy_token, without_kid):
        with pytest.raises(AuthenticationError, match="no longer accepted"):
            retired.verify(token)
    with pytest.raises(KeySetError, match="no signing key"):
        retired.issue("u", ["*"], [SCOPE_READ])


def test_the_key_file_is_private_and_holds_what_it_says(keys: Path) -> None:
    first = KeySetFile(keys).rotate()
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    body = json.loads(keys.read_text())
    assert body["keys"] == [{"kid": first.kid, "secret": first.secret, "created": first.created.isoformat()}]
    assert first.secret not in repr(first)
    # A clock set back still leaves the newly added key the newest.
    later = KeySetFile(keys).rotate(now=first.created - timedelta(days=1))
    assert KeySetFile(keys).read().newest == later


def test_a_malformed_key_file_fails_at_start_and_keeps_the_last_good_keys_later(keys: Path) -> None:
    key = KeySetFile(keys).rotate()
    service = _service(keys)
    token = service.issue("u", ["*"], [SCOPE_READ])
    keys.write_text('{"keys": [{"kid": "short", "secret": "x", "created": "2026-01-01"}]}')
    assert service.verify(token).subject == "u"
    assert service.signing_kid() == key.kid
    with pytest.raises(KeySetError, match="at least 32"):
        _service(keys)
    keys.write_text("not json")
    with pytest.raises(KeySetError, match="not JSON"):
        _service(keys)


def test_the_keys_command_rotates_lists_and_removes_without_showing_secrets(
    keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api = ApiSettings(jwt_keys_file=keys, jwt_secret=SecretStr(LEGACY))
    assert token_command.keys(["rotate"], api) == 0
    assert token_command.keys(["rotate"], api) == 0
    first, second = KeySetFile(keys).read().keys
    capsys.readouterr()
    assert token_command.keys(["list"], api) == 0
    listing = capsys.readouterr().out
    assert first.kid in listing and second.kid in listing and LEGACY_KID in listing
    assert f"{second.kid}" in next(line for line in listing.splitlines() if "(signs)" in line)
    assert first.secret not in listing and second.secret not in listing and LEGACY not in listing
    assert token_command.keys(["remove", first.kid], api) == 0
    assert [key.kid for key in KeySetFile(keys).read().keys] == [second.kid]
    assert token_command.keys(["remove", first.kid], api) == 1
    assert token_command.keys(["remove", LEGACY_KID], api) == 1
    assert "OMS_JWT_ACCEPT_LEGACY" in capsys.readouterr().err


# ---- the identity provider's keys (JWKS) ---------------------------------------------------------------------


def _jwk(private: Any, kid: str) -> dict[str, Any]:
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(private, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
    jwk: dict[str, Any] = json.loads(algorithm.to_jwk(private.public_key()))
    jwk["kid"] = kid
    return jwk


@pytest.fixture(scope="module")
def idp_keys() -> dict[str, Any]:
    return {
        "rsa-1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec-1": ec.generate_private_key(ec.SECP256R1()),
    }


@pytest.fixture
def jwks(tmp_path: Path, idp_keys: dict[str, Any]) -> Jwks:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [_jwk(key, kid) for kid, key in idp_keys.items()]}))
    return Jwks(path, issuer="https://idp.example", audience="oms-api")


def _idp_token(idp_keys: dict[str, Any], kid: str, **overrides: Any) -> str:
    algorithm = "RS256" if kid.startswith("rsa") else "ES256"
    claims = _claims(**{"iss": "https://idp.example", "aud": "oms-api", "sub": "carol", **overrides})
    return jwt.encode(claims, idp_keys[kid], algorithm=algorithm, headers={"kid": kid})


def test_rs256_and_es256_tokens_verify_against_the_jwks(keys: Path, jwks: Jwks, idp_keys: dict[str, Any]) -> None:
    service = _service(keys, jwks=jwks)
    for kid in idp_keys:
        assert service.verify(_idp_token(idp_keys, kid)).subject == "carol"
    # The service's own tokens still verify beside them.
    assert service.verify(service.issue("u", ["*"], [SCOPE_READ])).subject == "u"


def test_idp_tokens_are_checked_for_issuer_audience_kid_and_key(
    keys: Path, jwks: Jwks, idp_keys: dict[str, Any]
) -> None:
    service = _service(keys, jwks=jwks)
    refused = {
        "issuer": _idp_token(idp_keys, "rsa-1", iss="oms"),
        "audience": _idp_token(idp_keys, "rsa-1", aud="someone-else"),
        "expired": _idp_token(idp_keys, "ec-1", exp=datetime.now(UTC) - timedelta(minutes=1)),
        "no audience": jwt.encode(
            _claims(iss="https://idp.example"), idp_keys["rsa-1"], algorithm="RS256", headers={"kid": "rsa-1"}
        ),
        "other key": jwt.encode(
            _claims(iss="https://idp.example", aud="oms-api"),
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
            algorithm="RS256",
            headers={"kid": "rsa-1"},
        ),
    }
    for case, token in refused.items():
        with pytest.raises(AuthenticationError, match="invalid token|expired"):
            service.verify(token)
        assert service.verify(_idp_token(idp_keys, "rsa-1")).subject == "carol", case
    unknown = jwt.encode(
        _claims(iss="https://idp.example", aud="oms-api"), idp_keys["rsa-1"], algorithm="RS256", headers={"kid": "x"}
    )
    with pytest.raises(AuthenticationError, match="unknown key id 'x'"):
        service.verify(unknown)
    # Without a JWKS, RS256 is not accepted at all.
    with pytest.raises(AuthenticationError, match="algorithm 'RS256' is not accepted"):
        _service(keys).verify(_idp_token(idp_keys, "rsa-1"))


def test_an_hs256_token_keyed_with_the_public_key_is_refused(keys: Path, jwks: Jwks, idp_keys: dict[str, Any]) -> None:
    # Algorithm confusion: HS256 signed with the (public) PEM of a JWKS key, naming that key's kid.
    public_pem = (
        idp_keys["rsa-1"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    claims = _claims(iss="https://idp.example", aud="oms-api")
    claims.update(iat=int(claims["iat"].timestamp()), exp=int(claims["exp"].timestamp()))
    # PyJWT will not HMAC with a PEM, so the forgery is put together by hand.
    encode = jwt.utils.base64url_encode
    signing_input = b".".join(
        encode(json.dumps(part).encode()) for part in ({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, claims)
    )
    signature = encode(hmac.new(public_pem, signing_input, hashlib.sha256).digest())
    token = (signing_input + b"." + signature).decode()
    with pytest.raises(AuthenticationError, match="unknown key id 'rsa-1'"):
        _service(keys, jwks=jwks).verify(token)


def test_a_jwks_symmetric_key_is_never_used(tmp_path: Path, keys: Path) -> None:
    secret = "oct-secret-published-in-a-jwks-0123456789"
    path = tmp_path / "jwks.json"
    oct_key = {"kty": "oct", "kid": "oct-1", "k": jwt.utils.base64url_encode(secret.encode()).decode()}
    rsa_key = _jwk(rsa.generate_private_key(public_exponent=65537, key_size=2048), "rsa-2")
    path.write_text(json.dumps({"keys": [oct_key, rsa_key]}))
    service = _service(keys, jwks=Jwks(path, issuer="oms", audience=None))
    token = jwt.encode(_claims(), secret, algorithm="HS256", headers={"kid": "oct-1"})
    with pytest.raises(AuthenticationError, match="unknown key id 'oct-1'"):
        service.verify(token)


def test_settings_build_the_service_with_the_jwks(
    tmp_path: Path, keys: Path, jwks: Jwks, idp_keys: dict[str, Any]
) -> None:
    api = ApiSettings(
        jwt_secret=SecretStr(LEGACY),
        jwt_keys_file=keys,
        jwt_jwks_file=jwks.path,
        jwt_jwks_issuer="https://idp.example",
        jwt_jwks_audience="oms-api",
    )
    assert TokenService.from_settings(api).verify(_idp_token(idp_keys, "ec-1")).subject == "carol"
    with pytest.raises(KeySetError, match="does not exist"):
        TokenService.from_settings(api.model_copy(update={"jwt_jwks_file": tmp_path / "missing.json"}))
    retired = TokenService.from_settings(api.model_copy(update={"jwt_accept_legacy": False}))
    with pytest.raises(AuthenticationError, match="no longer accepted"):
        retired.verify(jwt.encode(_claims(), LEGACY, algorithm="HS256"))
