"""Client auto-configuration documents: Thunderbird, Outlook, Apple. Pure functions.

* Thunderbird (and K-9/Thunderbird for Android, Evolution, KMail) fetch
  ``https://autoconfig.DOMAIN/mail/config-v1.1.xml?emailaddress=ADDR`` and
  ``https://DOMAIN/.well-known/autoconfig/mail/config-v1.1.xml`` (then the same over
  plain http) and read the ``clientConfig`` format version 1.1
  (draft-ietf-mailmaint-autoconfig). Usernames are given as the ``%EMAILADDRESS%``
  placeholder, so the answer is the same for every address of a domain and tells nobody
  whether a user exists.
* Outlook POSTs the "POX" autodiscover request (MS-OXDSCLI 2.2.3: an ``Autodiscover``
  element in the ``.../outlook/requestschema/2006`` namespace with ``EMailAddress`` and
  ``AcceptableResponseSchema``) to ``/autodiscover/autodiscover.xml`` on the domain or
  ``autodiscover.DOMAIN``, and reads an ``Account`` of type ``email`` with one
  ``Protocol`` per server (MS-OXDSCLI 2.2.4). A request for another response schema
  (ActiveSync's "mobilesync") gets error 601, a malformed one error 600.
* Apple Mail (macOS, iOS) installs a configuration profile: a property list with one
  ``com.apple.mail.managed`` payload. It holds no password (the device asks), and its
  UUIDs are derived from the address so that installing it again replaces it.

Every document is built from the same :class:`postroom.clients.Endpoint` list.
"""

from __future__ import annotations

import plistlib
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

from postroom.clients import Endpoint, best

# -- Thunderbird ---------------------------------------------------------------------------

_TB_SOCKET = {"ssl": "SSL", "starttls": "STARTTLS"}


def thunderbird_config(domain: str, endpoints: Sequence[Endpoint]) -> bytes:
    """The ``clientConfig`` version 1.1 document for ``domain``: every incoming server
    (IMAP before POP3, implicit TLS before STARTTLS: clients take the first that works)
    and every submission server."""
    root = ET.Element("clientConfig", version="1.1")
    provider = ET.SubElement(root, "emailProvider", id=domain)
    ET.SubElement(provider, "domain").text = domain
    ET.SubElement(provider, "displayName").text = f"{domain} mail"
    ET.SubElement(provider, "displayShortName").text = domain
    for e in endpoints:
        if e.protocol == "smtp":
            server = ET.SubElement(provider, "outgoingServer", type="smtp")
        else:
            server = ET.SubElement(provider, "incomingServer", type=e.protocol)
        ET.SubElement(server, "hostname").text = e.host
        ET.SubElement(server, "port").text = str(e.port)
        ET.SubElement(server, "socketType").text = _TB_SOCKET[e.security]
        # Clear-text passwords inside TLS: the mechanisms every client has (PLAIN/LOGIN);
        # app passwords only work with them (see docs/operations.md).
        ET.SubElement(server, "authentication").text = "password-cleartext"
        ET.SubElement(server, "username").text = "%EMAILADDRESS%"
    return _xml(root)


# -- Outlook (POX autodiscover) ------------------------------------------------------------

REQUEST_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
RESPONSE_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
OUTLOOK_SCHEMA = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
MAX_REQUEST = 16 * 1024  # a real request is about 400 octets


class AutodiscoverError(Exception):
    """The request cannot be answered; ``code`` is the MS-OXDSCLI error code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class AutodiscoverRequest:
    email: str
    schema: str


def parse_autodiscover(body: bytes) -> AutodiscoverRequest:
    """Read Outlook's request; raise :class:`AutodiscoverError` (600 invalid request,
    601 schema not offered). Refuses DTDs outright: no entity is ever expanded."""
    if len(body) > MAX_REQUEST:
        raise AutodiscoverError(600, "Request too large")
    if b"<!" in body:  # DOCTYPE, ENTITY (and CDATA, which no real request has)
        raise AutodiscoverError(600, "Invalid Request")
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        raise AutodiscoverError(600, "Invalid Request") from None
    if root.tag != f"{{{REQUEST_NS}}}Autodiscover":
        raise AutodiscoverError(600, "Invalid Request")
    request = root.find(f"{{{REQUEST_NS}}}Request")
    if request is None:
        raise AutodiscoverError(600, "Invalid Request")
    email = (request.findtext(f"{{{REQUEST_NS}}}EMailAddress") or "").strip()
    schema = (request.findtext(f"{{{REQUEST_NS}}}AcceptableResponseSchema") or "").strip()
    if not email or "@" not in email:
        raise AutodiscoverError(600, "Invalid Request")
    if schema != OUTLOOK_SCHEMA:
        raise AutodiscoverError(601, "Provider is not available")
    return AutodiscoverRequest(email=email, schema=schema)


_OUTLOOK_TYPES = {"imap": "IMAP", "pop3": "POP3", "smtp": "SMTP"}


def autodiscover_response(email: str, endpoints: Sequence[Endpoint]) -> bytes:
    """The ``Account`` answer (MS-OXDSCLI 2.2.4.1.1.2): the best IMAP (else POP3) server
    and the best submission server, with the address as login name."""
    root = ET.Element("Autodiscover", xmlns=RESPONSE_NS)
    response = ET.SubElement(root, "Response", xmlns=OUTLOOK_SCHEMA)
    account = ET.SubElement(response, "Account")
    ET.SubElement(account, "AccountType").text = "email"
    ET.SubElement(account, "Action").text = "settings"
    incoming = best(endpoints, "imap") or best(endpoints, "pop3")
    outgoing = best(endpoints, "smtp")
    for e in (incoming, outgoing):
        if e is None:
            continue
        proto = ET.SubElement(account, "Protocol")
        ET.SubElement(proto, "Type").text = _OUTLOOK_TYPES[e.protocol]
        ET.SubElement(proto, "Server").text = e.host
        ET.SubElement(proto, "Port").text = str(e.port)
        ET.SubElement(proto, "DomainRequired").text = "off"
        ET.SubElement(proto, "LoginName").text = email
        ET.SubElement(proto, "SPA").text = "off"
        # SSL "on" plus Encryption: Outlook 2010+ reads Encryption (SSL = implicit TLS,
        # TLS = STARTTLS), older versions only SSL.
        ET.SubElement(proto, "SSL").text = "on"
        ET.SubElement(proto, "Encryption").text = "SSL" if e.security == "ssl" else "TLS"
        ET.SubElement(proto, "AuthRequired").text = "on"
        if e.protocol == "smtp":
            ET.SubElement(proto, "UsePOPAuth").text = "on"  # same credentials as incoming
            ET.SubElement(proto, "SMTPLast").text = "off"
    return _xml(root)


def autodiscover_error(code: int, message: str) -> bytes:
    root = ET.Element("Autodiscover", xmlns=RESPONSE_NS)
    response = ET.SubElement(root, "Response")
    error = ET.SubElement(response, "Error", Id="0", Time="00:00:00")
    ET.SubElement(error, "ErrorCode").text = str(code)
    ET.SubElement(error, "Message").text = message
    ET.SubElement(error, "DebugData")
    return _xml(root)


# -- Apple configuration profile -------------------------------------------------------------

MOBILECONFIG_TYPE = "application/x-apple-aspen-config"


def mobileconfig(address: str, hostname: str, endpoints: Sequence[Endpoint]) -> bytes:
    """An unsigned ``.mobileconfig`` for ``address``: best IMAP (else POP3) and submission
    servers, TLS on both, the address as user name, no password."""
    incoming = best(endpoints, "imap") or best(endpoints, "pop3")
    outgoing = best(endpoints, "smtp")
    if incoming is None or outgoing is None:
        raise ValueError("no IMAP/POP3 or submission listener to describe")
    ident = ".".join(reversed(hostname.split(".")))
    payload = {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{ident}.postroom.mail.{_uuid('mail', address)}",
        "PayloadUUID": _uuid("mail", address),
        "PayloadDisplayName": address,
        "PayloadDescription": f"Mail account {address}",
        "EmailAccountDescription": address,
        "EmailAccountType": "EmailTypeIMAP" if incoming.protocol == "imap" else "EmailTypePOP",
        "EmailAddress": address,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "IncomingMailServerHostName": incoming.host,
        "IncomingMailServerPortNumber": incoming.port,
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerUsername": address,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": outgoing.host,
        "OutgoingMailServerPortNumber": outgoing.port,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerUsername": address,
        "OutgoingPasswordSameAsIncomingPassword": True,
        "PreventMove": False,
        "PreventAppSheet": False,
        "SMIMEEnabled": False,
        "allowMailDrop": True,
    }
    profile = {
        "PayloadContent": [payload],
        "PayloadDisplayName": f"{address} ({hostname})",
        "PayloadDescription": f"Sets up the mail account {address} on {hostname}",
        "PayloadIdentifier": f"{ident}.postroom.{_uuid('profile', address)}",
        "PayloadOrganization": hostname,
        "PayloadRemovalDisallowed": False,
        "PayloadType": "Configuration",
        "PayloadUUID": _uuid("profile", address),
        "PayloadVersion": 1,
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML, sort_keys=True)


def _uuid(kind: str, address: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"postroom:{kind}:{address.lower()}")).upper()


def _xml(root: ET.Element) -> bytes:
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)
