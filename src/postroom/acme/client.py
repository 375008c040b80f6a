"""One certificate order (RFC 8555 7.4), run in a worker thread with certbot's ``acme``.

Why a thread: ``acme`` is built on ``requests`` and sleeps between polls; every call blocks.
Wrapping the whole issuance in one ``asyncio.to_thread`` keeps those waits off the event
loop, which meanwhile answers the CA's validation connections (HTTP-01 through the HTTP
service, TLS-ALPN-01 through the TLS listeners). The library was kept over a hand-written
client because JWS signing, nonces, badNonce retries and the order state machine are the
parts that are easy to get subtly wrong. An issuance against pebble takes well under a second
of this thread's time; the loop never waits for it.

The account key (ECDSA P-256, ES256) and the account URL live in ``DATA/acme/account.json``
(mode 0600). The account is looked up on every issuance (``newAccount`` with the same key
returns the existing one, RFC 8555 7.3.1), so a CA that forgot it (a test CA restarted)
simply gets a new registration.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import josepy as jose
from acme import challenges, client, crypto_util, errors, messages
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from postroom.acme.challenges import Responder

log = logging.getLogger("postroom.acme")

ORDER_TIMEOUT = 120.0  # seconds for validations plus finalization
USER_AGENT = "postroom"


class AcmeFailure(Exception):
    """The order failed; ``failed`` maps each name whose validation failed to the CA's reason."""

    def __init__(self, message: str, failed: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.failed = failed or {}


@dataclass(frozen=True)
class Issued:
    chain_pem: bytes  # leaf first, then the intermediates (RFC 8555 7.4.2)
    key_pem: bytes


class _EmptyResponse(challenges.ChallengeResponse):
    """The body POSTed to a challenge URL to ask for validation: ``{}`` (RFC 8555 7.5.1).
    Used for TLS-ALPN-01, which the ``acme`` package no longer has a class for."""

    typ = "tls-alpn-01"

    def __bool__(self) -> bool:
        # A field-less josepy object has length 0, and ``acme`` sends a falsy object as
        # an empty payload, i.e. a POST-as-GET that does not start the validation.
        return True

    def to_partial_json(self) -> dict[str, Any]:
        return {}


def account_key(path: Path) -> tuple[jose.JWKEC, str]:
    """The account key and its known URL ("" before the first registration); created once."""
    try:
        data = json.loads(path.read_text())
        return jose.JWKEC.json_loads(json.dumps(data["key"])), str(data.get("uri", ""))
    except FileNotFoundError:
        pass
    key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    _save_account(path, key, "")
    return key, ""


def _save_account(path: Path, key: jose.JWKEC, uri: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"key": key.to_partial_json(), "uri": uri}, f)
    os.replace(tmp, path)


def new_private_key() -> bytes:
    """The certificate's key (ECDSA P-256): a new one for every certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def key_authorization(token: str, key: jose.JWK) -> str:
    """RFC 8555 8.1: token "." base64url(SHA-256 JWK thumbprint)."""
    thumbprint = jose.b64encode(key.public_key().thumbprint(hash_function=hashes.SHA256)).decode()
    return f"{token}.{thumbprint}"


def _challenge_type(challb: messages.ChallengeBody) -> str:
    chall = challb.chall
    if isinstance(chall, challenges.UnrecognizedChallenge):
        return str(chall.jobj.get("type", ""))
    return str(getattr(chall, "typ", ""))


def _token(challb: messages.ChallengeBody) -> str:
    chall = challb.chall
    if isinstance(chall, challenges.UnrecognizedChallenge):
        return str(chall.jobj.get("token", ""))
    return str(chall.encode("token"))


def _problem(authzr: messages.AuthorizationResource) -> str:
    for challb in authzr.body.challenges:
        if challb.error is not None:
            return str(challb.error.detail or challb.error.typ)[:300]
    return str(authzr.body.status)


def issue(
    *,
    directory: str,
    ca_file: Path | None,
    contact: str,
    account_path: Path,
    names: Iterable[str],
    methods: tuple[str, ...],
    responder: Responder,
    timeout: float = ORDER_TIMEOUT,
) -> Issued:
    """Order a certificate for ``names`` (the first is the subject) and return it.

    ``methods`` lists the challenge types we can answer, in order of preference.
    Raises :class:`AcmeFailure` (with the names that failed validation, if any).
    """
    names = list(names)
    key, uri = account_key(account_path)
    net = client.ClientNetwork(
        key, alg=jose.ES256, user_agent=USER_AGENT,
        # requests takes a CA bundle path where ``acme`` types a bool.
        verify_ssl=str(ca_file) if ca_file is not None else True,  # type: ignore[arg-type]
    )
    try:
        acme = client.ClientV2(client.ClientV2.get_directory(directory, net), net)
        registration = messages.NewRegistration.from_data(email=contact, terms_of_service_agreed=True)
        try:
            regr = acme.new_account(registration)
            uri = regr.uri
        except errors.ConflictError as e:  # this key is registered already (RFC 8555 7.3.1)
            uri = e.location
            net.account = messages.RegistrationResource(uri=uri, body=messages.Registration())
        _save_account(account_path, key, uri)
        key_pem = new_private_key()
        order = acme.new_order(crypto_util.make_csr(key_pem, names))
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout)
        try:
            for authzr in order.authorizations:
                if authzr.body.status == messages.STATUS_VALID:
                    continue  # validated recently for this account (RFC 8555 7.1.4)
                _answer(acme, key, authzr, methods, responder)
            order = acme.poll_authorizations(order, deadline)
            order = acme.finalize_order(order, deadline)
        finally:
            responder.clear()
    except errors.ValidationError as e:
        failed = {a.body.identifier.value: _problem(a) for a in e.failed_authzrs}
        raise AcmeFailure("validation failed: " + "; ".join(f"{n}: {r}" for n, r in failed.items()), failed) from None
    except (errors.Error, messages.Error) as e:
        raise AcmeFailure(f"{type(e).__name__}: {e}"[:500]) from None
    except OSError as e:  # connection refused, TLS verification, timeouts (requests' errors are OSErrors)
        raise AcmeFailure(f"cannot reach {directory}: {e}"[:500]) from None
    finally:
        net.session.close()
    if not order.fullchain_pem:
        raise AcmeFailure("the CA returned no certificate")
    return Issued(chain_pem=order.fullchain_pem.encode("ascii"), key_pem=key_pem)


def _answer(
    acme: client.ClientV2,
    key: jose.JWK,
    authzr: messages.AuthorizationResource,
    methods: tuple[str, ...],
    responder: Responder,
) -> None:
    offered = {_challenge_type(c): c for c in authzr.body.challenges}
    method = next((m for m in methods if m in offered), None)
    name = authzr.body.identifier.value
    if method is None:
        raise AcmeFailure(
            f"{name}: the CA offers {', '.join(sorted(offered))}; we answer {', '.join(methods)}",
            {name: "no usable challenge"},
        )
    challb = offered[method]
    keyauth = key_authorization(_token(challb), key)
    response: challenges.ChallengeResponse
    if method == "http-01":
        responder.add_http01(_token(challb), keyauth)
        response = challenges.HTTP01Response()
    else:
        responder.add_tls_alpn01(name, keyauth)
        response = _EmptyResponse()
    log.info("event=acme_challenge name=%s method=%s", name, method)
    acme.answer_challenge(challb, response)
