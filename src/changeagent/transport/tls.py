"""SSL contexts for mutual TLS on the cluster port (`-ccert`, `-ckey`, `-cca`), and
for the API's TLS listener (`-sp` with `-cert`, `-key`, optionally `-cas`).

Both sides present a certificate and accept only certificates signed by the
cluster CA; TLS 1.2 or newer. Host names are not checked by default: a peer is
identified by its node id, proven in the HELLO handshake, and the CA signature
proves it belongs to the cluster's operator (addresses change with membership).
"""

from __future__ import annotations

import ssl


def server_context(cert_file: str, key_file: str, ca_file: str) -> ssl.SSLContext:
    """For `Transport.serve_tcp`: requires a client certificate signed by `ca_file`."""
    return api_server_context(cert_file, key_file, ca_file)


def api_server_context(
    cert_file: str, key_file: str, client_ca_file: str | None = None
) -> ssl.SSLContext:
    """For a TLS listener; with `client_ca_file`, clients must present a certificate
    signed by one of its CAs (expired or otherwise invalid ones are refused)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    if client_ca_file is not None:
        context.load_verify_locations(cafile=client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    cert_file: str, key_file: str, ca_file: str, check_hostname: bool = False
) -> ssl.SSLContext:
    """For `TcpDialer`: presents our certificate, trusts only `ca_file`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    context.load_verify_locations(cafile=ca_file)
    context.check_hostname = check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    return context
