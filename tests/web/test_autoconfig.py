"""The auto-configuration documents as pure functions: shapes, escaping, hostile input."""

from __future__ import annotations

import plistlib
import xml.etree.ElementTree as ET

import pytest

from postroom.clients import Endpoint
from postroom.web import autoconfig
from postroom.web.autoconfig import AutodiscoverError, parse_autodiscover

IMAPS = Endpoint("imap", "imaps", "mail.example.org", 993, "ssl")
IMAP = Endpoint("imap", "imap", "mail.example.org", 143, "starttls")
POP3S = Endpoint("pop3", "pop3s", "mail.example.org", 995, "ssl")
SUB = Endpoint("smtp", "submission", "mail.example.org", 587, "starttls")
NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
OUTLOOK = autoconfig.OUTLOOK_SCHEMA


def request(email: str = "a@example.org", schema: str = OUTLOOK, ns: str = NS) -> bytes:
    return (f'<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="{ns}"><Request>'
            f"<EMailAddress>{email}</EMailAddress><AcceptableResponseSchema>{schema}"
            "</AcceptableResponseSchema></Request></Autodiscover>").encode()


def test_thunderbird_document() -> None:
    root = ET.fromstring(autoconfig.thunderbird_config("example.org", [IMAP, POP3S, SUB]))
    provider = root.find("emailProvider")
    assert provider is not None and provider.get("id") == "example.org"
    incoming = provider.findall("incomingServer")
    assert [(s.get("type"), s.findtext("port"), s.findtext("socketType")) for s in incoming] == [
        ("imap", "143", "STARTTLS"), ("pop3", "995", "SSL"),
    ]
    (out,) = provider.findall("outgoingServer")
    assert out.findtext("socketType") == "STARTTLS" and out.findtext("username") == "%EMAILADDRESS%"


def test_autodiscover_request_parsing() -> None:
    assert parse_autodiscover(request()).email == "a@example.org"
    with pytest.raises(AutodiscoverError) as e:
        parse_autodiscover(request(schema="http://schemas.microsoft.com/exchange/autodiscover/mobilesync/responseschema/2006"))
    assert e.value.code == 601
    for bad in (b"", b"<x/>", request(email=""), request(email="no-at-sign"), request(ns="urn:other"),
                b"<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]>" + request(),
                request() + b"x" * autoconfig.MAX_REQUEST, b"\xff\xfe<"):
        with pytest.raises(AutodiscoverError) as e:
            parse_autodiscover(bad)
        assert e.value.code == 600


def test_autodiscover_response_escapes_the_address() -> None:
    body = autoconfig.autodiscover_response('x"<&>@example.org', [IMAP, SUB])
    root = ET.fromstring(body)  # well-formed whatever the address holds
    login = root.find(f".//{{{OUTLOOK}}}LoginName")
    assert login is not None and login.text == 'x"<&>@example.org'
    enc = [e.text for e in root.iter(f"{{{OUTLOOK}}}Encryption")]
    assert enc == ["TLS", "TLS"]  # both STARTTLS
    error = ET.fromstring(autoconfig.autodiscover_error(600, "Invalid Request"))
    assert error.findtext(".//{http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006}ErrorCode") == "600"


def test_mobileconfig() -> None:
    profile = plistlib.loads(autoconfig.mobileconfig("a@example.org", "mail.example.org", [IMAPS, IMAP, SUB]))
    (mail,) = profile["PayloadContent"]
    assert mail["IncomingMailServerPortNumber"] == 993 and mail["OutgoingMailServerPortNumber"] == 587
    assert profile["PayloadIdentifier"].startswith("org.example.mail.postroom.")
    other = plistlib.loads(autoconfig.mobileconfig("b@example.org", "mail.example.org", [IMAPS, SUB]))
    assert other["PayloadUUID"] != profile["PayloadUUID"]
    pop_only = plistlib.loads(autoconfig.mobileconfig("a@example.org", "mail.example.org", [POP3S, SUB]))
    assert pop_only["PayloadContent"][0]["EmailAccountType"] == "EmailTypePOP"
    with pytest.raises(ValueError):
        autoconfig.mobileconfig("a@example.org", "mail.example.org", [IMAPS])  # no submission
