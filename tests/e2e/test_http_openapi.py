"""The admin API against its own OpenAPI document, with schemathesis (from PyPI).

schemathesis reads ``/api/v1/openapi.json`` from the running server, generates requests
from it (examples, boundary values, random and invalid data, and stateful sequences that
create, read and delete through the API's links) and checks every answer: no 5xx, only
documented status codes, content types and headers, bodies that match the documented
schemas, invalid data refused, authentication not ignored, 405 with ``Allow``.

It runs with both credentials a client can have: the admin API token (admin routes) and
a user's session cookie with its CSRF token (the user's own routes). Left out: logout
(it would end that session mid-run) and the ``positive_data_acceptance`` check: the API
validates meaning beyond the schema (is this a domain name, does the user exist) and says
so with a documented 400/404, which that check counts as a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from support.http import HttpServer
from support.server import PASSWORD

SLOW = os.environ.get("POSTROOM_SLOW") == "1"


def test_api_conforms_to_its_openapi_document(tmp_path: Path) -> None:
    srv = HttpServer(tmp_path, extra='[limits]\nauth_delay = "0s"\n')
    srv.setup_admin()
    srv.add_user("fuzz@example.test")
    srv.start()
    try:
        status, headers, session = srv.call(
            "POST", "/api/v1/login", {"address": "fuzz@example.test", "password": PASSWORD}, token=""
        )
        assert status == 200
        cookie = headers["set-cookie"].split(";")[0].partition("=")[2]
        # Credentials by security scheme name, so that schemathesis knows which header or
        # cookie is which (and can leave each out to check it is required).
        (tmp_path / "schemathesis.toml").write_text(
            f'headers = {{ "X-CSRF-Token" = "{session["csrf"]}" }}\n'
            f'[auth.openapi.bearerAuth]\nbearer = "{srv.token}"\n'
            f'[auth.openapi.sessionCookie]\napi_key = "{cookie}"\n'
        )
        st = Path(sys.executable).with_name("st")
        proc = subprocess.run(
            [
                str(st), "run", f"https://127.0.0.1:{srv.https_port}/api/v1/openapi.json",
                "--tls-verify", "false",
                "--checks", "all", "--exclude-checks", "positive_data_acceptance",
                "--exclude-path", "/api/v1/logout",
                "--max-examples", "40" if SLOW else "8",
                "--seed", "20261206", "--generation-database", "none",
                "--workers", "2", "--request-timeout", "20", "--no-color",
            ],
            capture_output=True, text=True, timeout=600, cwd=tmp_path,
        )
        (tmp_path / "st.out").write_text(proc.stdout + proc.stderr)
        assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-2000:]
        assert "Tested: " in proc.stdout
    finally:
        srv.stop()
    assert "Traceback" not in srv.logs()
