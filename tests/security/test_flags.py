"""Security and cluster flags: consistency checks (exit 2, one line) and what reaches
ServerOptions; the data-directory permission warning."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from changeagent.cli.serve import build_parser, options_from_arguments
from changeagent.security.tls_files import ApiTls, ClusterTls
from changeagent.server import ServerOptions
from tests.security.conftest import StartNode
from tests.security.support import htpasswd, run_cli

BAD_FLAGS = [
    (["-key", "k.pem"], "-cert and -key must be given together"),
    (["-sp", "8443", "-cert", "c.pem"], "-cert and -key must be given together"),
    (["-cert", "c.pem", "-key", "k.pem"], "-cert, -key and -cas need -sp"),
    (["-cas", "cas.pem"], "-cert, -key and -cas need -sp"),
    (["-sp", "8443"], "-sp needs -cert and -key"),
    (["-sp", "8443", "-cas", "cas.pem"], "-sp needs -cert and -key"),
    (["-sp", "70000", "-cert", "c", "-key", "k"], "-sp: port 70000 is not between 0 and 65535"),
    (["-p", "9000", "-sp", "9000", "-cert", "c", "-key", "k"], "must be different ports"),
    (["-ccert", "c.pem"], "-ccert, -ckey and -cca must be given together"),
    (["-cp", "9443", "-ckey", "k", "-cca", "ca"], "-ccert, -ckey and -cca must be given together"),
    (["-ccert", "c", "-ckey", "k", "-cca", "ca"], "-ccert, -ckey and -cca need -cp"),
    (["-cp", "8080"], "-cp must differ from -p and -sp"),
    (["-cp", "-1"], "-cp: port -1 is not between 0 and 65535"),
]


@pytest.mark.parametrize(("flags", "reason"), BAD_FLAGS)
def test_inconsistent_flags_exit_2_with_one_line(
    tmp_path: Path, flags: list[str], reason: str
) -> None:
    result = run_cli("-d", str(tmp_path / "data"), *flags)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("changeagent: ") and reason in lines[0]
    assert not (tmp_path / "data").exists()


def test_missing_password_file_exits_2(tmp_path: Path) -> None:
    result = run_cli("-d", str(tmp_path / "data"), "-p", "0", "-pw", str(tmp_path / "absent"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("changeagent: -pw ")


def options(*flags: str) -> ServerOptions:
    return options_from_arguments(build_parser().parse_args(list(flags)))


def test_cluster_flags_reach_server_options() -> None:
    parsed = options("-cp", "9443", "-ccert", "n.pem", "-ckey", "n.key", "-cca", "ca.pem")
    assert parsed.cluster_port == 9443
    assert parsed.cluster_tls == ClusterTls(Path("n.pem"), Path("n.key"), Path("ca.pem"))
    plain = options("-cp", "9000")
    assert plain.cluster_port == 9000 and plain.cluster_tls is None
    none = options()
    assert none.cluster_port is None and none.cluster_tls is None


def test_changeagent_readme_combined_command_line_parses() -> None:
    parsed = options(
        "-sp", "8443", "-cp", "9443", "-cert", "cacert.pem", "-key", "cakey.pem",
        "-cas", "cacerts.pem", "-ckey", "clusterkey.pem", "-ccert", "clustercert.pem",
        "-cca", "clusterca.pem",
    )  # fmt: skip
    assert parsed.port is None and parsed.secure_port == 8443
    assert parsed.api_tls == ApiTls(Path("cacert.pem"), Path("cakey.pem"), Path("cacerts.pem"))
    assert parsed.cluster_tls == ClusterTls(
        Path("clustercert.pem"), Path("clusterkey.pem"), Path("clusterca.pem")
    )


def test_port_defaults() -> None:
    assert options().port == 8080
    both = options("-p", "8000", "-sp", "8443", "-cert", "c", "-key", "k")
    assert (both.port, both.secure_port) == (8000, 8443)


def test_open_data_dir_is_warned_about(start_node: StartNode, tmp_path: Path) -> None:
    fresh = start_node("-p", "0")
    assert "data directory" not in fresh.log_text()
    assert (fresh.data_dir.stat().st_mode & 0o777) == 0o700
    exposed_dir = tmp_path / "data1"  # the next node's directory, made 0755 beforehand
    exposed_dir.mkdir()
    os.chmod(exposed_dir, 0o755)
    exposed = start_node("-p", "0")
    assert exposed.data_dir == exposed_dir
    assert f"data directory {exposed_dir} has mode 0755" in exposed.log_text()


def test_password_file_with_only_unsupported_entries_starts(
    start_node: StartNode, tmp_path: Path
) -> None:
    passwd = tmp_path / "passwd"
    htpasswd(passwd, "md5user", "pw", "-m")
    node = start_node("-p", "0", "-pw", str(passwd))
    assert node.request("GET", "/changes").status == 401
    assert "'md5user' has a non-bcrypt entry" in node.log_text()
