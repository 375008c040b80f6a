"""SMTP client core: transactions (MAIL, RCPT, DATA, end of data), pipelining, BDAT, reuse.

Every script runs whole and one byte at a time (``run`` from test_client_smtp).
"""

from __future__ import annotations

import pytest
from test_client_smtp import ENV, ENV2, EOF, GREET, MSG, PIPE, READY, ehlo, quit_, run, send

from postroom.proto.smtp.client import (
    CLOSED,
    IDLE,
    NEED_DATA,
    Cause,
    Closed,
    Envelope,
    Expect,
    Outcome,
    Recipient,
    SessionFailed,
    Stage,
    TransactionResult,
)
from postroom.proto.smtp.replies import Reply

# --- MAIL / RCPT / DATA / end of data, without pipelining ---------------------------------


def test_plain_transaction_bytes() -> None:
    r = run(
        [
            *READY,
            send(ENV2),
            b"250 2.1.0 ok\r\n",
            b"250 2.1.5 ok\r\n",
            b"250 2.1.5 ok\r\n",
            b"354 go ahead\r\n",
            b"250 2.0.0 queued as 1234\r\n",
        ]
    )
    assert r.writes[1:] == [
        b"MAIL FROM:<alice@example.org> SIZE=22\r\n",
        b"RCPT TO:<bob@example.net>\r\n",
        b"RCPT TO:<carol@example.net>\r\n",
        b"DATA\r\n",
        MSG + b".\r\n",
    ]
    result = r.result()
    assert result.stage is Stage.END_OF_DATA and result.cause is Cause.REPLY
    assert [x.outcome for x in result.results] == [Outcome.DELIVERED, Outcome.DELIVERED]
    assert result.results[0].reply == Reply(250, "2.0.0", "queued as 1234")
    assert result.delivered == result.results
    assert r.last is IDLE and r.client.idle


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        (b"451 4.3.0 try later\r\n", Outcome.TEMPORARY),
        (b"553 5.7.1 not you\r\n", Outcome.PERMANENT),
    ],
)
def test_mail_refused(reply: bytes, outcome: Outcome) -> None:
    r = run([*READY, send(ENV2), reply])
    result = r.result()
    assert result.stage is Stage.MAIL
    assert [(x.outcome, x.stage) for x in result.results] == [(outcome, Stage.MAIL)] * 2
    assert b"RCPT" not in r.sent and b"RSET" not in r.sent  # no transaction to reset
    assert r.last is IDLE


def test_rcpt_mixed_results() -> None:
    env = Envelope.simple(
        "a@example.org", ["ok@x.example", "temp@x.example", "perm@x.example", "many@x.example"]
    )
    r = run(
        [
            *READY,
            send(env),
            b"250 ok\r\n",
            b"250 ok\r\n",
            b"450 4.2.1 busy\r\n",
            b"550 5.1.1 unknown\r\n",
            b"552 5.5.3 too many recipients\r\n",
            b"354 go\r\n",
            b"250 queued\r\n",
        ]
    )
    outcomes = [(x.outcome, x.stage, x.reply.code) for x in r.result().results]
    assert outcomes == [
        (Outcome.DELIVERED, Stage.END_OF_DATA, 250),
        (Outcome.TEMPORARY, Stage.RCPT, 450),
        (Outcome.PERMANENT, Stage.RCPT, 550),
        (Outcome.TEMPORARY, Stage.RCPT, 552),  # RFC 5321 4.5.3.1.10
    ]


def test_all_rcpt_refused_resets_before_reporting() -> None:
    r = run([*READY, send(ENV2), b"250 ok\r\n", b"550 5.1.1 no\r\n", b"450 4.2.0 later\r\n"])
    assert b"DATA" not in r.sent
    assert r.writes[-1] == b"RSET\r\n"
    assert r.of(TransactionResult) == [] and r.last is NEED_DATA  # held until RSET answers
    r = run(
        [
            *READY,
            send(ENV2),
            b"250 ok\r\n",
            b"550 5.1.1 no\r\n",
            b"450 4.2.0 later\r\n",
            b"250 2.0.0 reset\r\n",
        ]
    )
    result = r.result()
    assert result.reply == Reply(450, "4.2.0", "later") and result.stage is Stage.RCPT
    assert [x.outcome for x in result.results] == [Outcome.PERMANENT, Outcome.TEMPORARY]
    assert r.last is IDLE


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        (b"451 4.3.0 no\r\n", Outcome.TEMPORARY),
        (b"554 5.5.1 no valid recipients\r\n", Outcome.PERMANENT),
    ],
)
def test_data_refused(reply: bytes, outcome: Outcome) -> None:
    r = run([*READY, send(ENV), b"250 ok\r\n", b"250 ok\r\n", reply, b"250 reset\r\n"])
    assert r.writes[-1] == b"RSET\r\n"  # MAIL is still in effect on the server
    (result,) = r.of(TransactionResult)
    assert isinstance(result, TransactionResult)
    assert (result.results[0].outcome, result.results[0].stage) == (outcome, Stage.DATA)
    assert result.stage is Stage.DATA


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        (b"250 2.0.0 ok\r\n", Outcome.DELIVERED),
        (b"451 4.3.0 disk full\r\n", Outcome.TEMPORARY),
        (b"554 5.7.1 spam\r\n", Outcome.PERMANENT),
        (b"552 5.3.4 too big\r\n", Outcome.PERMANENT),  # 552 after data is permanent
    ],
)
def test_end_of_data_reply(reply: bytes, outcome: Outcome) -> None:
    r = run([*READY, send(ENV2), b"250 ok\r\n", b"250 ok\r\n", b"550 no\r\n", b"354 go\r\n", reply])
    result = r.result()
    assert result.results[0].outcome is outcome
    assert result.results[0].stage is Stage.END_OF_DATA
    assert result.results[1].outcome is Outcome.PERMANENT  # the refused RCPT stays refused
    assert b"RSET" not in r.sent  # the dot ended the server's transaction
    assert r.last is IDLE


def test_421_at_end_of_data() -> None:
    r = run(
        [
            *READY,
            send(ENV),
            b"250 ok\r\n",
            b"250 ok\r\n",
            b"354 go\r\n",
            b"421 4.3.2 shutting down\r\n",
        ]
    )
    result, failed = r.events[-2:]
    assert isinstance(result, TransactionResult) and isinstance(failed, SessionFailed)
    assert result.results[0].outcome is Outcome.TEMPORARY
    assert result.results[0].stage is Stage.END_OF_DATA
    assert failed.during is Expect.DATA_END and failed.cause is Cause.REPLY
    assert not r.sent.endswith(b"QUIT\r\n")
    assert r.last is CLOSED


def test_dot_stuffing_and_crlf_normalisation() -> None:
    message = b"Subject: dots\n\n.one\n..two\r\nbare\rcr\n.\nend"
    r = run(
        [*READY, send(ENV, message), b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n", b"250 ok\r\n"]
    )
    assert r.writes[-1] == (
        b"Subject: dots\r\n\r\n..one\r\n...two\r\nbare\r\ncr\r\n..\r\nend\r\n.\r\n"
    )
    assert b"SIZE=48" in r.sent  # the normalised size, before stuffing


def test_message_starting_with_dot() -> None:
    r = run(
        [
            *READY,
            send(ENV, b".hidden\r\n"),
            b"250 ok\r\n",
            b"250 ok\r\n",
            b"354 go\r\n",
            b"250 ok\r\n",
        ]
    )
    assert r.writes[-1] == b"..hidden\r\n.\r\n"


# --- pipelining ----------------------------------------------------------------------------


def test_pipelined_batch_is_one_write() -> None:
    env = Envelope(
        "alice@example.org",
        (
            Recipient(
                "bob@example.net", notify=("SUCCESS", "FAILURE"), orcpt="rfc822;Bob@example.net"
            ),
            Recipient("carol@example.net", notify=("NEVER",)),
        ),
        ret="HDRS",
        envid="QQ 314+159",
    )
    r = run([*PIPE, send(env)])
    assert r.writes[-1] == (
        b"MAIL FROM:<alice@example.org> RET=HDRS ENVID=QQ+20314+2B159\r\n"
        b"RCPT TO:<bob@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Bob@example.net\r\n"
        b"RCPT TO:<carol@example.net> NOTIFY=NEVER\r\n"
        b"DATA\r\n"
    )
    r = run([*PIPE, send(env), b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n", b"250 queued\r\n"])
    assert r.writes[-1] == MSG + b".\r\n"
    assert r.result().dsn
    assert [x.outcome for x in r.result().results] == [Outcome.DELIVERED] * 2


def test_dsn_parameters_dropped_without_dsn() -> None:
    env = Envelope(
        "a@example.org",
        (Recipient("b@example.net", ("SUCCESS",), "rfc822;b@example.net"),),
        ret="FULL",
        envid="X",
    )
    r = run([GREET, ehlo("PIPELINING"), send(env)])
    assert r.writes[-1] == b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"


def test_pipelined_mail_refused_consumes_the_rest() -> None:
    r = run([*PIPE, send(ENV2), b"550 5.7.1 no\r\n503 5.5.1 no MAIL\r\n503 no\r\n554 no\r\n"])
    result = r.result()
    assert result.stage is Stage.MAIL and result.reply.code == 550
    assert [x.reply.code for x in result.results] == [550, 550]
    assert b"RSET" not in r.sent
    assert r.last is IDLE


def test_pipelined_all_rcpt_refused() -> None:
    r = run(
        [
            *PIPE,
            send(ENV2),
            b"250 ok\r\n550 no\r\n551 no\r\n554 5.5.1 no valid rcpt\r\n",
            b"250 reset\r\n",
        ]
    )
    assert r.writes[-1] == b"RSET\r\n"
    result = r.result()
    assert [x.reply.code for x in result.results] == [550, 551]
    assert result.stage is Stage.RCPT


def test_pipelined_data_accepted_without_recipients_sends_lone_dot() -> None:
    # RFC 2920 3.1: a broken server says 354 although no RCPT succeeded.
    r = run([*PIPE, send(ENV), b"250 ok\r\n550 no\r\n354 go\r\n", b"250 empty ok\r\n"])
    assert r.writes[-1] == b".\r\n"
    result = r.result()
    assert result.results[0].outcome is Outcome.PERMANENT and result.stage is Stage.RCPT
    assert b"RSET" not in r.sent


def test_pipelined_replies_in_one_read_or_many() -> None:
    script = [
        *PIPE,
        send(ENV2),
        b"250 ok\r\n250 ok\r\n",
        b"452 4.5.3 too many\r\n354 go\r\n",
        b"250 ok\r\n",
    ]
    r = run(script)
    assert [x.outcome for x in r.result().results] == [Outcome.DELIVERED, Outcome.TEMPORARY]


def test_pipelining_can_be_disabled() -> None:
    r = run([*PIPE, send(ENV)], use_pipelining=False)
    assert r.writes[-1] == b"MAIL FROM:<alice@example.org>\r\n"


# --- BDAT ----------------------------------------------------------------------------------


def test_bdat_without_pipelining() -> None:
    r = run(
        [
            GREET,
            ehlo("CHUNKING"),
            send(ENV, b"Subject: x\r\n\r\n.dot\r\n"),
            b"250 ok\r\n",
            b"250 ok\r\n",
            b"250 2.0.0 queued\r\n",
        ]
    )
    assert r.writes[1:] == [
        b"MAIL FROM:<alice@example.org>\r\n",
        b"RCPT TO:<bob@example.net>\r\n",
        b"BDAT 20 LAST\r\nSubject: x\r\n\r\n.dot\r\n",  # no dot-stuffing with BDAT
    ]
    assert r.result().results[0].outcome is Outcome.DELIVERED


def test_bdat_small_message_pipelined_with_envelope() -> None:
    r = run([GREET, ehlo("PIPELINING", "CHUNKING"), send(ENV)])
    assert r.writes[-1] == (
        b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nBDAT 22 LAST\r\n" + MSG
    )
    r = run([GREET, ehlo("PIPELINING", "CHUNKING"), send(ENV), b"250 ok\r\n250 ok\r\n250 ok\r\n"])
    assert r.result().results[0].outcome is Outcome.DELIVERED
    assert r.last is IDLE


def test_bdat_large_message_waits_for_the_envelope() -> None:
    big = b"Subject: big\r\n\r\n" + b"x" * 100 + b"\r\n"
    r = run(
        [
            GREET,
            ehlo("PIPELINING", "CHUNKING"),
            send(ENV, big),
            b"250 ok\r\n250 ok\r\n",
            b"250 ok\r\n",
        ],
        pipeline_bdat_max=50,
    )
    assert r.writes[1] == b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\n"
    assert r.writes[2] == b"BDAT %d LAST\r\n" % len(big) + big
    assert r.result().results[0].outcome is Outcome.DELIVERED
    # Envelope refused: the big body is never sent.
    r = run(
        [
            GREET,
            ehlo("PIPELINING", "CHUNKING"),
            send(ENV, big),
            b"250 ok\r\n550 no\r\n",
            b"250 reset\r\n",
        ],
        pipeline_bdat_max=50,
    )
    assert b"BDAT" not in r.sent and r.writes[-1] == b"RSET\r\n"


def test_bdat_refused_resets() -> None:
    r = run(
        [
            GREET,
            ehlo("CHUNKING"),
            send(ENV),
            b"250 ok\r\n",
            b"250 ok\r\n",
            b"552 5.3.4 too big\r\n",
            b"250 reset\r\n",
        ]
    )
    assert r.writes[-1] == b"RSET\r\n"
    assert r.result().results[0].outcome is Outcome.PERMANENT
    assert r.result().stage is Stage.END_OF_DATA


def test_bdat_pipelined_with_every_rcpt_refused() -> None:
    r = run(
        [
            GREET,
            ehlo("PIPELINING", "CHUNKING"),
            send(ENV),
            b"250 ok\r\n550 5.1.1 no\r\n554 5.5.1 no valid recipients\r\n",
            b"250 reset\r\n",
        ]
    )
    result = r.result()
    assert result.results[0].reply.code == 550 and result.stage is Stage.RCPT
    assert r.writes[-1] == b"RSET\r\n"


def test_chunking_can_be_disabled() -> None:
    r = run([GREET, ehlo("CHUNKING"), send(ENV), b"250 ok\r\n", b"250 ok\r\n"], use_chunking=False)
    assert r.writes[-1] == b"DATA\r\n"


# --- reuse, RSET, QUIT --------------------------------------------------------------------


def test_connection_reuse_for_three_messages() -> None:
    env3 = Envelope.simple("", ["x@example.net"])  # a bounce: null reverse-path
    r = run(
        [
            *PIPE,
            send(ENV),
            b"250 ok\r\n250 ok\r\n354 go\r\n",
            b"250 2.0.0 one\r\n",
            send(ENV2),
            b"250 ok\r\n550 no\r\n550 no\r\n554 no valid recipients\r\n",
            b"250 reset\r\n",
            send(env3, b"Subject: bounce\r\n\r\nsorry\r\n"),
            b"250 ok\r\n250 ok\r\n354 go\r\n",
            b"250 2.0.0 three\r\n",
            quit_,
            b"221 2.0.0 bye\r\n",
        ]
    )
    results = r.of(TransactionResult)
    assert len(results) == 3
    one, two, three = (x for x in results if isinstance(x, TransactionResult))
    assert one.results[0].reply.text == "one" and one.results[0].outcome is Outcome.DELIVERED
    assert [x.outcome for x in two.results] == [Outcome.PERMANENT] * 2
    assert three.results[0].reply.text == "three"
    assert b"RSET\r\nMAIL FROM:<>" in r.sent
    assert r.sent.count(b"RSET") == 1
    assert r.events[-1] == Closed(Reply(221, "2.0.0", "bye"))
    assert r.last is CLOSED


def test_rset_refused_ends_session_after_the_result() -> None:
    r = run([*READY, send(ENV), b"250 ok\r\n", b"550 no\r\n", b"500 what RSET\r\n"])
    result, failed = r.events[-2:]
    assert isinstance(result, TransactionResult) and isinstance(failed, SessionFailed)
    assert failed.during is Expect.RSET


def test_quit_then_eof_without_reply() -> None:
    r = run([*READY, quit_, EOF])
    assert r.events[-1] == Closed(None) and r.last is CLOSED


def test_quit_any_reply_closes() -> None:
    r = run([*READY, quit_, b"421 bye anyway\r\n"])
    assert r.events[-1] == Closed(Reply(421, None, "bye anyway"))
