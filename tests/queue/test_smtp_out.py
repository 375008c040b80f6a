"""net/smtp_out.py over real loopback sockets against the capture server: TLS policies,
AUTH, connection reuse, failures at each stage, timeouts, 8BITMIME/SMTPUTF8 downgrades."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from support.capture import Behaviour, Capture

from postroom.net.smtp_out import OutboundOptions, SetupError, SmtpOut
from postroom.proto.smtp.client import Cause, Envelope, Outcome, Recipient, Stage
from postroom.queue.model import TransportError
from postroom.queue.routing import Target

MSG = b"From: a@here.test\r\nTo: b@there.test\r\nSubject: t\r\nMessage-ID: <1@here.test>\r\n\r\nbody\r\n"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="module")
def capture(ca: trustme.CA) -> Iterator[Capture]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("mx.good.test").configure_cert(ctx)
    addresses = tuple(f"127.0.0.{i}" for i in range(30, 45))
    cap = Capture(addresses, tls=ctx).start()
    yield cap
    cap.stop()


_next = iter(range(30, 45))


def target(capture: Capture, behaviour: Behaviour, name: str = "mx.good.test") -> Target:
    """A fresh capture address with ``behaviour``."""
    address = f"127.0.0.{next(_next)}"
    capture.behaviours[address] = behaviour
    return Target(name, address, capture.port)


def arrived(capture: Capture, t: Target) -> list:  # type: ignore[type-arg]
    with capture.lock:
        return [m for m in capture.messages if m.address == t.address]


OPTS = OutboundOptions(helo_name="out.here.test", connect_timeout=5, read_timeout=5)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_plain_delivery_and_reuse(capture: Capture) -> None:
    t = target(capture, Behaviour(starttls=False))

    async def main() -> None:
        s = await SmtpOut.connect(t, OPTS)
        assert s.tls == "" and s.usable
        for i in range(3):
            r = await s.send(Envelope.simple("a@here.test", [f"b{i}@there.test"]), MSG)
            assert [x.outcome for x in r.results] == [Outcome.DELIVERED]
        await s.close()

    run(main())
    got = arrived(capture, t)
    assert len(got) == 3 and len({m.session for m in got}) == 1  # one connection, 3 messages
    assert got[0].helo == "out.here.test" and got[0].mail_from == "a@here.test"
    assert got[0].data == MSG


def test_may_uses_starttls_with_any_certificate(capture: Capture) -> None:
    t = target(capture, Behaviour(), name="some.other.name")  # certificate does not match

    async def main() -> str:
        s = await SmtpOut.connect(t, OPTS)
        await s.send(Envelope.simple("a@here.test", ["b@there.test"]), MSG)
        await s.close()
        return s.tls

    assert run(main()).startswith("TLS")
    assert arrived(capture, t)[0].tls


def test_require_without_starttls_is_a_setup_error(capture: Capture) -> None:
    t = target(capture, Behaviour(starttls=False))
    opts = OutboundOptions(helo_name="h.test", tls_policy="require", read_timeout=5)
    with pytest.raises(SetupError) as info:
        run(SmtpOut.connect(t, opts))
    assert info.value.status == "4.7.4" and "TLS is required" in info.value.diagnostic
    assert not arrived(capture, t)


def test_verify_policy(capture: Capture, ca_file: Path) -> None:
    good = target(capture, Behaviour(), name="mx.good.test")
    bad = target(capture, Behaviour(), name="mx.wrong.test")
    opts = OutboundOptions(helo_name="h.test", tls_policy="verify", read_timeout=5, ca_file=ca_file)

    async def main() -> None:
        s = await SmtpOut.connect(good, opts)
        assert s.tls
        await s.close()

    run(main())
    with pytest.raises(SetupError) as info:
        run(SmtpOut.connect(bad, opts))
    assert info.value.error is TransportError.TLS_FAILED and info.value.tls_failed
    untrusted = OutboundOptions(helo_name="h.test", tls_policy="verify", read_timeout=5)
    with pytest.raises(SetupError):  # the system CAs do not know the test CA
        run(SmtpOut.connect(good, untrusted))


def test_none_policy_never_starttls(capture: Capture) -> None:
    t = target(capture, Behaviour())
    opts = OutboundOptions(helo_name="h.test", tls_policy="none", read_timeout=5)

    async def main() -> None:
        s = await SmtpOut.connect(t, opts)
        await s.send(Envelope.simple("a@here.test", ["b@there.test"]), MSG)
        await s.close()

    run(main())
    assert not arrived(capture, t)[0].tls


def test_auth_plain_and_login(capture: Capture) -> None:
    users = {"relay-user": "s3cret"}
    plain = target(capture, Behaviour(auth=users, starttls=False))
    login = target(capture, Behaviour(auth=users, starttls=False, extensions=("ENHANCEDSTATUSCODES",)))

    async def main(t: Target, password: str) -> None:
        opts = OutboundOptions(helo_name="h.test", username="relay-user", password=password, read_timeout=5)
        s = await SmtpOut.connect(t, opts)
        await s.send(Envelope.simple("a@here.test", ["b@there.test"]), MSG)
        await s.close()

    run(main(plain, "s3cret"))
    assert arrived(capture, plain)[0].auth_user == "relay-user"
    capture.behaviours[login.address].auth = users
    run(main(login, "s3cret"))
    assert arrived(capture, login)[0].auth_user == "relay-user"
    with pytest.raises(SetupError) as info:
        run(main(plain, "wrong"))
    assert "authentication failed" in info.value.diagnostic and info.value.status.startswith("4.")


def test_greeting_refused_and_connection_refused(capture: Capture) -> None:
    t = target(capture, Behaviour(greeting="554 5.7.1 no service for you"))
    with pytest.raises(SetupError) as info:
        run(SmtpOut.connect(t, OPTS))
    assert info.value.reply is not None and info.value.reply.code == 554
    assert info.value.status == "4.7.1"  # a refusing MX: try another one, or later
    closed = Target("closed.test", "127.0.0.1", 1)  # nothing listens on port 1
    with pytest.raises(SetupError) as info:
        run(SmtpOut.connect(closed, OPTS))
    assert info.value.error is TransportError.CONNECTION_REFUSED and info.value.status == "4.4.1"


def test_replies_at_each_stage(capture: Capture) -> None:
    t = target(capture, Behaviour(
        starttls=False,
        replies={"mail": ["451 4.3.0 mail later"], "rcpt": ["550 5.1.1 no such user"],
                 "data": ["452 4.3.1 full"], "data_end": ["554 5.6.0 rejected content"]},
    ))

    async def main() -> list:  # type: ignore[type-arg]
        s = await SmtpOut.connect(t, OPTS)
        results = []
        for _ in range(5):
            results.append(await s.send(Envelope.simple("a@here.test", ["b@there.test", "c@there.test"]), MSG))
        await s.close()
        return results

    r1, r2, r3, r4, r5 = run(main())
    assert [x.outcome for x in r1.results] == [Outcome.TEMPORARY] * 2 and r1.stage is Stage.MAIL
    # (pipelined: the RCPTs and DATA after a refused MAIL were refused too, unscripted)
    assert [x.outcome for x in r2.results] == [Outcome.PERMANENT, Outcome.TEMPORARY]
    assert r2.results[0].stage is Stage.RCPT and r2.results[0].reply.enhanced == "5.1.1"
    assert r2.results[1].stage is Stage.DATA and r2.results[1].reply.code == 452
    assert [x.outcome for x in r3.results] == [Outcome.PERMANENT] * 2
    assert r3.stage is Stage.END_OF_DATA
    assert [x.outcome for x in r4.results] == [Outcome.DELIVERED] * 2
    assert [x.outcome for x in r5.results] == [Outcome.DELIVERED] * 2
    assert len(arrived(capture, t)) == 2


def test_drop_mid_data_is_temporary(capture: Capture) -> None:
    t = target(capture, Behaviour(starttls=False, drop_in_data=1))
    big = MSG + b"line\r\n" * 2000

    async def main() -> tuple:  # type: ignore[type-arg]
        s = await SmtpOut.connect(t, OPTS)
        r = await s.send(Envelope.simple("a@here.test", ["b@there.test"]), big)
        usable = s.usable
        await s.close()
        return r, usable

    r, usable = run(main())
    assert r.results[0].outcome is Outcome.TEMPORARY and r.cause is Cause.CONNECTION_LOST
    assert not usable and not arrived(capture, t)


def test_slow_server_within_and_beyond_timeout(capture: Capture) -> None:
    slow = target(capture, Behaviour(starttls=False, delay=0.2))

    async def main(read_timeout: float) -> Outcome:
        opts = OutboundOptions(helo_name="h.test", read_timeout=read_timeout)
        s = await SmtpOut.connect(slow, opts)
        r = await s.send(Envelope.simple("a@here.test", ["b@there.test"]), MSG)
        await s.close()
        return r.results[0].outcome

    assert run(main(2.0)) is Outcome.DELIVERED
    with pytest.raises(SetupError) as info:  # the greeting alone takes longer
        run(main(0.05))
    assert info.value.error is TransportError.TIMEOUT


def test_chunking_sends_bdat(capture: Capture) -> None:
    t = target(capture, Behaviour(starttls=False, extensions=("PIPELINING", "CHUNKING", "8BITMIME")))

    async def main() -> None:
        s = await SmtpOut.connect(t, OPTS)
        await s.send(Envelope.simple("a@here.test", ["b@there.test"]), MSG + b".leading dot\r\n")
        await s.close()

    run(main())
    (got,) = arrived(capture, t)
    assert got.chunked and got.data.endswith(b".leading dot\r\n")


def test_no_8bitmime_converts_and_no_smtputf8_refuses(capture: Capture) -> None:
    t = target(capture, Behaviour(starttls=False, extensions=("PIPELINING",)))
    eight = (
        b"From: a@here.test\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n"
    )

    async def main() -> tuple:  # type: ignore[type-arg]
        s = await SmtpOut.connect(t, OPTS)
        r1 = await s.send(Envelope.simple("a@here.test", ["b@there.test"]), eight)
        env = Envelope("a@here.test", (Recipient("jörg@there.test"),), smtputf8=True)
        r2 = await s.send(env, MSG)
        await s.close()
        return r1, r2

    r1, r2 = run(main())
    assert r1.converted_8bit and r1.results[0].outcome is Outcome.DELIVERED
    (got,) = arrived(capture, t)
    assert got.data.isascii() and b"quoted-printable" in got.data and b"Gr=C3=BC=C3=9Fe" in got.data
    assert r2.results[0].outcome is Outcome.PERMANENT and r2.results[0].reply.enhanced == "5.6.7"


def test_tls_failures_get_their_tls_rpt_result_types() -> None:
    """RFC 8460 4.3.1 names for what a certificate check says (OpenSSL's verify codes)."""
    import ssl

    from postroom.net.smtp_out import tls_result_of

    def failed(code: int) -> ssl.SSLCertVerificationError:
        e = ssl.SSLCertVerificationError(1, "certificate verify failed")
        e.verify_code = code
        return e

    assert tls_result_of(failed(10)) == "certificate-expired"
    assert tls_result_of(failed(62)) == "certificate-host-mismatch"
    assert tls_result_of(failed(20)) == "certificate-not-trusted"
    assert tls_result_of(failed(18)) == "certificate-not-trusted"  # self-signed
    assert tls_result_of(failed(7)) == "validation-failure"  # bad signature
    assert tls_result_of(ssl.SSLError(1, "handshake failure")) == "validation-failure"
    assert tls_result_of(ConnectionResetError()) == "validation-failure"
