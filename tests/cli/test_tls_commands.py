"""The client commands over HTTPS: --cacert, and a client certificate (--cert and
--cert-key) for a node that requires one (-cas)."""

from __future__ import annotations

import orjson

from tests.cli.support import cli_environment, one_error_line, run_cli
from tests.security.conftest import StartNode
from tests.security.pki import Pki


def test_commands_over_https_with_a_client_certificate(start_node: StartNode, pki: Pki) -> None:
    arguments = ["-sp", "0", "-cert", str(pki.server.cert), "-key", str(pki.server.key)]
    node = start_node(*arguments, "-cas", str(pki.ca.cert_file), expect=("https",))
    url = f"https://localhost:{node.ports['https']}"
    tls = ["--cacert", str(pki.ca.cert_file)]
    certificate = ["--cert", str(pki.client.cert), "--cert-key", str(pki.client.key)]
    posted = run_cli("post", *tls, *certificate, '"over tls"', servers=url)
    assert posted.returncode == 0, posted.stderr
    change = orjson.loads(posted.stdout)
    got = run_cli("get", *tls, *certificate, str(change["_id"]), servers=url)
    assert orjson.loads(got.stdout) == change
    without_certificate = run_cli("get", *tls, "--timeout", "2", str(change["_id"]), servers=url)
    assert without_certificate.returncode == 1
    one_error_line(without_certificate)
    unverified = run_cli("get", *certificate, str(change["_id"]), environment=cli_environment(url))
    assert unverified.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in one_error_line(unverified)
