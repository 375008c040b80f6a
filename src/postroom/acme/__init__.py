"""Automatic certificates (``tls.acme``, RFC 8555): obtain, store, renew, reload.

* :mod:`postroom.acme.challenges` answers the CA's checks: HTTP-01 (RFC 8555 8.3) as a file
  the HTTP service already serves, TLS-ALPN-01 (RFC 8737) as a certificate the implicit-TLS
  listeners present to a client that asks for the ``acme-tls/1`` protocol.
* :mod:`postroom.acme.client` runs one issuance with certbot's ``acme`` library. That
  library is synchronous (``requests``, ``time.sleep`` while polling), so an issuance runs
  in a worker thread and the event loop stays free to answer the CA's validation requests.
* :mod:`postroom.acme.manager` decides when (the first start, 2/3 of the lifetime, new
  names, retries with backoff), writes the files in ``DATA/acme/`` and reloads the TLS
  context in place (postroom.tls: running connections keep theirs).
"""
