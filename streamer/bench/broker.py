"""A throwaway MQTT broker on 127.0.0.1: a Mosquitto child process on a free port, which
``das-stream bench`` starts when no broker is given and the tests start for every MQTT test
(tests/brokers.py adds an amqtt fallback for machines without Mosquitto).

The process can be stopped and started again on the same port (``stop()`` really closes every
connection); ``start()`` and ``stop()`` block for a few milliseconds (spawn, wait for the port;
terminate, wait), so async code calls them as ``await asyncio.to_thread(broker.stop)``.
"""

from __future__ import annotations

import contextlib
import getpass
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
_READY_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0
_PORT_ATTEMPTS = 5


@dataclass(frozen=True)
class MosquittoOptions:
    """Extra Mosquitto listener settings for TLS, password and limit tests.

    Args:
        certfile, keyfile: server certificate and key (PEM); both given turns TLS on.
        password_file: a file made by ``mosquitto_passwd``; given, anonymous access is off.
        max_packet_size: the largest packet the broker accepts (it disconnects a client that
            sends a larger one); None: Mosquitto's default (no limit).
    """

    certfile: Path | None = None
    keyfile: Path | None = None
    password_file: Path | None = None
    max_packet_size: int | None = None

    @property
    def tls(self) -> bool:
        return self.certfile is not None


def find_mosquitto() -> str | None:
    """The mosquitto binary (PATH first, then Debian's /usr/sbin), or None."""
    found = shutil.which("mosquitto")
    if found:
        return found
    debian = Path("/usr/sbin/mosquitto")
    return str(debian) if debian.is_file() else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


class BrokerProcess:
    """A broker child process on 127.0.0.1 that can be stopped and started on the same port.

    Attributes:
        kind: "mosquitto" or "amqtt".
        keeps_sessions: whether persistent sessions (subscriptions and queued QoS 1 messages of
            clean_session=False clients) survive ``stop()``/``start()``.
        host, port, url: where clients connect; ``url`` is what ``MqttSettings.from_url`` takes.
    """

    kind = ""
    keeps_sessions = False
    scheme = "mqtt"

    def __init__(self, *, workdir: Path) -> None:
        self.host = HOST
        self.port = 0
        self._workdir = workdir
        self._log_path = workdir / f"{self.kind}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the broker (on a fresh free port the first time, on the same port after)."""
        if self.running:
            raise RuntimeError(f"{self.kind} broker already running on port {self.port}")
        if self.port:
            self._spawn_and_wait()
            return
        for _ in range(_PORT_ATTEMPTS):  # another process may take the free port before us
            self.port = free_port()
            try:
                self._spawn_and_wait()
                return
            except RuntimeError:
                continue
        raise RuntimeError(f"{self.kind} broker did not start; log:\n{self.log()}")

    def stop(self) -> None:
        """Terminate the broker (SIGTERM, so Mosquitto saves its sessions) and wait for it."""
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log(self) -> str:
        """The broker's log so far (for failure messages)."""
        return self._log_path.read_text(errors="replace") if self._log_path.exists() else ""

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _spawn_and_wait(self) -> None:
        with self._log_path.open("ab") as log:
            self._proc = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while not _accepts(self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.kind} broker failed on port {self.port}; log:\n{self.log()}")
            time.sleep(0.005)


class MosquittoBroker(BrokerProcess):
    """A ``mosquitto -c CONF`` process with persistence in ``workdir`` (sessions survive restarts)."""

    kind = "mosquitto"
    keeps_sessions = True

    def __init__(self, *, workdir: Path, binary: str, options: MosquittoOptions = MosquittoOptions()) -> None:
        super().__init__(workdir=workdir)
        self._binary = binary
        self._options = options
        self.scheme = "mqtts" if options.tls else "mqtt"

    def _config(self) -> str:
        opts = self._options
        lines = [
            f"listener {self.port} {HOST}",
            f"allow_anonymous {'false' if opts.password_file else 'true'}",
            "persistence true",
            f"persistence_location {self._workdir}/",
            f"log_dest file {self._log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            # As root, mosquitto would switch to user "mosquitto", which cannot write workdir.
            f"user {getpass.getuser()}",
        ]
        if opts.password_file:
            lines.append(f"password_file {opts.password_file}")
        if opts.tls:
            lines += [f"certfile {opts.certfile}", f"keyfile {opts.keyfile}"]
        if opts.max_packet_size is not None:
            lines.append(f"max_packet_size {opts.max_packet_size}")
        return "\n".join(lines) + "\n"

    def _command(self) -> list[str]:
        conf = self._workdir / "mosquitto.conf"
        conf.write_text(self._config())
        return [self._binary, "-c", str(conf)]


@contextlib.contextmanager
def local_broker(url: str | None = None) -> Iterator[str | None]:
    """``url`` when given; else a throwaway Mosquitto for the duration (its URL), or None when
    Mosquitto is not installed."""
    if url:
        yield url
        return
    binary = find_mosquitto()
    if binary is None:
        yield None
        return
    with tempfile.TemporaryDirectory() as tmp:
        broker = MosquittoBroker(workdir=Path(tmp), binary=binary)
        broker.start()
        try:
            yield broker.url
        finally:
            broker.stop()
