"""Scenario h: what authentication and TLS cost, as throughput ratios to plain HTTP.

Four changeagent nodes run side by side on loopback: plain HTTP without auth (the
baseline), Basic auth (`-pw`, a bcrypt htpasswd file), HTTPS (`-sp` with a
self-signed certificate) and both. Each round measures every node in turn with wrk
(writes: `POST /changes`; reads: `GET /changes?since=N&limit=100` of a full page near
the end, the in-memory path; N is fixed after the node's first write measurement,
which stores thousands of changes), so slow drifts of a shared machine hit every
configuration alike.
Each figure is the median over rounds of (configuration / plain in the same round).

Credentials are the same on every request, so after the first one per connection
auth costs one HMAC (the cache in api/auth.py); this is what the < 10% target is about.
"""

from __future__ import annotations

import base64
import ssl
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import orjson

from bench.procs import (
    LOOPBACK,
    PROCESSES,
    TEARDOWN_GRACE_SECONDS,
    BenchError,
    SkipScenario,
    Started,
    cpu_seconds,
    env_without_proxies,
    free_port,
    wait_until,
)
from bench.scenarios.common import Recorder, Settings, median
from bench.systems.base import System
from bench.systems.changeagent import changeagent_command
from bench.wrk import run_wrk, wrk_available

SCENARIO = "h. security overhead"
USER, PASSWORD = "bench", "bench-password-1"
CONNECTIONS = 16
READ_PAGE = 100


@dataclass
class Configuration:
    name: str
    auth: bool
    tls: bool
    port: int = 0
    process: Started | None = None
    read_since: int = 0  # reads ask for the page after this index
    throughput: dict[str, list[float]] = field(default_factory=dict)
    # Server CPU per answered request: less sensitive than throughput to a shared machine.
    cpu_us: dict[str, list[float]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{LOOPBACK}:{self.port}"


CONFIGURATIONS = (("plain", False, False), ("auth", True, False),
                  ("tls", False, True), ("auth+tls", True, True))


def run_security(system_cls: type[System], settings: Settings, recorder: Recorder) -> None:
    if system_cls.name != "changeagent":
        return  # it compares changeagent's own configurations: nothing to skip elsewhere
    if not wrk_available():
        raise SkipScenario("wrk is not installed")
    # Quick mode only proves the scenario still runs (the suite's bench test).
    quick = settings.mode == "quick"
    rounds = 1 if quick else max(5, settings.runs)
    seconds = min(settings.write_seconds, 3)
    directory = PROCESSES.make_dir("security")
    configurations = [Configuration(*c) for c in CONFIGURATIONS]
    try:
        for configuration in configurations:  # side by side, then wait for each
            _start(configuration, directory)
        for configuration in configurations:
            _wait_answering(configuration)
        PROCESSES.wait_retired()  # the previous scenario's servers are gone
        for round_number in range(rounds):
            for configuration in _rotated(configurations, round_number):
                for operation in ("write", "read"):
                    if operation == "read" and not configuration.read_since:
                        _set_read_point(configuration)
                    _measure(configuration, operation, seconds, round_number)
        _record(configurations, recorder)
    finally:
        PROCESSES.retire([[c.process for c in configurations if c.process is not None]],
                         directory, lambda killed: recorder.log(
                             f"  changeagent ({SCENARIO}) SIGKILL at teardown, not stopped "
                             f"{TEARDOWN_GRACE_SECONDS:g} s after SIGTERM: "
                             f"{', '.join(killed)}"))


def _rotated(configurations: list[Configuration], shift: int) -> list[Configuration]:
    # A different configuration goes first each round: none always runs on a cold machine.
    shift %= len(configurations)
    return configurations[shift:] + configurations[:shift]


# Starting the nodes


def _start(configuration: Configuration, directory: Path) -> None:
    configuration.port = free_port()
    argv = [*changeagent_command(), "--host", LOOPBACK, "-d",
            str(directory / configuration.name)]
    if configuration.tls:
        cert, key = _certificate(directory)
        argv += ["-sp", str(configuration.port), "-cert", str(cert), "-key", str(key)]
    else:
        argv += ["-p", str(configuration.port)]
    if configuration.auth:
        argv += ["-pw", str(_password_file(directory))]
    configuration.process = PROCESSES.start(f"changeagent-{configuration.name}", argv,
                                            directory, env=env_without_proxies())


def _wait_answering(configuration: Configuration) -> None:
    wait_until(lambda: _get(configuration, "/health") == 200, 30,
               f"changeagent ({configuration.name}) to answer", configuration.process,
               interval=0.02)


def _password_file(directory: Path) -> Path:
    path = directory / "passwd"
    if not path.exists():
        # Cost 5: what `htpasswd -B` writes by default.
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=5)).decode()
        path.write_text(f"{USER}:{hashed}\n")
    return path


def _certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "server.pem", directory / "server.key"
    if not cert.exists():
        try:
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                 str(cert), "-days", "2", "-subj", "/CN=localhost",
                 "-addext", "subjectAltName=IP:127.0.0.1"],
                check=True, capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as error:
            raise SkipScenario(f"openssl could not make a certificate: {error}") from error
    return cert, key


def _opener() -> urllib.request.OpenerDirector:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # our own self-signed certificate, on loopback
    handlers = [urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)]
    return urllib.request.build_opener(*handlers)


def _authorization() -> str:
    return "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def _get(configuration: Configuration, path: str) -> int | None:
    request = urllib.request.Request(configuration.url + path)
    if configuration.auth:
        request.add_header("Authorization", _authorization())
    try:
        with _opener().open(request, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return None


def _set_read_point(configuration: Configuration) -> None:
    # After the node's first write measurement (thousands of changes): reads of a full
    # page just before the newest change, what consumers near the end ask for, served
    # from the in-memory tail.
    last = _post_one(configuration)
    if last <= 2 * READ_PAGE:
        raise BenchError(f"changeagent ({configuration.name}) stored only {last} changes")
    configuration.read_since = last - 2 * READ_PAGE


def _post_one(configuration: Configuration) -> int:
    request = urllib.request.Request(configuration.url + "/changes",
                                     data=b'{"data":"last"}',
                                     headers={"Content-Type": "application/json"})
    if configuration.auth:
        request.add_header("Authorization", _authorization())
    with _opener().open(request, timeout=10) as response:
        return int(orjson.loads(response.read())["_id"])


# Measuring


def _measure(configuration: Configuration, operation: str, seconds: float,
             round_number: int) -> None:
    assert configuration.process is not None
    cpu_before = cpu_seconds([configuration.process.pid])
    result = _wrk(configuration, operation, seconds, f"{round_number}")
    cpu = cpu_seconds([configuration.process.pid]) - cpu_before
    configuration.throughput.setdefault(operation, []).append(float(result["throughput"]))
    configuration.cpu_us.setdefault(operation, []).append(1e6 * cpu / float(result["ok"]))


def _wrk(configuration: Configuration, operation: str, seconds: float,
         label: str) -> dict[str, Any]:
    path = ("/changes" if operation == "write"
            else f"/changes?since={configuration.read_since}&limit={READ_PAGE}")
    env = {"BENCH_METHOD": "POST" if operation == "write" else "GET",
           "BENCH_AUTH": _authorization() if configuration.auth else ""}
    result = run_wrk(configuration.url + path, "security_request.lua", CONNECTIONS, seconds,
                     f"security-{configuration.name}-{operation}-{label}", env)
    if result["errors"] or not result["ok"]:
        raise BenchError(f"changeagent ({configuration.name}) {operation}s failed: "
                         f"{result['errors']} errors, {result['ok']} answered")
    return result


def _record(configurations: list[Configuration], recorder: Recorder) -> None:
    baseline = configurations[0]
    for configuration in configurations:
        for operation, values in configuration.throughput.items():
            unit = "writes/s" if operation == "write" else "reads/s"
            # Not "writes/s, ...": the report reads those rows as scenario a's loads.
            recorder.add(SCENARIO, f"{operation} throughput, {configuration.name}, "
                         f"{CONNECTIONS} connections",
                         "changeagent", median(values), unit, "higher",
                         rounds=[round(v) for v in values])
            cpu = configuration.cpu_us[operation]
            recorder.add(SCENARIO, f"server CPU per {operation}, {configuration.name}",
                         "changeagent", median(cpu), "us", "lower",
                         rounds=[round(v, 1) for v in cpu])
            if configuration is baseline:
                continue
            ratios = [value / base for value, base in
                      zip(values, baseline.throughput[operation], strict=True)]
            recorder.add(SCENARIO, f"{operation} throughput {configuration.name} / plain",
                         "changeagent", median(ratios), "ratio", "higher",
                         rounds=[round(r, 3) for r in ratios])
