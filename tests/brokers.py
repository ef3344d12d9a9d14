"""Real MQTT brokers for tests: a Mosquitto process, or an amqtt broker in a subprocess.

Mosquitto is preferred (``.ci/run`` installs it); where no ``mosquitto`` binary exists the tests
fall back to amqtt, never to a mock. Both run as child processes on a free 127.0.0.1 port, so
``stop()`` really closes every connection and ``start()`` brings the broker back on the same port.

``start()`` and ``stop()`` block for a few milliseconds (spawn, wait for the port; terminate,
wait); from async code call them as ``await asyncio.to_thread(broker.stop)``.

Run as a script (``python tests/brokers.py amqtt PORT``) it serves amqtt on 127.0.0.1:PORT until
SIGTERM; that is how :class:`AmqttBroker` starts its child.
"""

from __future__ import annotations

import asyncio
import getpass
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
_READY_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0
_PORT_ATTEMPTS = 5


@dataclass(frozen=True)
class MosquittoOptions:
    """Extra Mosquitto listener settings for TLS and password tests.

    Args:
        certfile, keyfile: server certificate and key (PEM); both given turns TLS on.
        password_file: a file made by ``mosquitto_passwd``; given, anonymous access is off.
    """

    certfile: Path | None = None
    keyfile: Path | None = None
    password_file: Path | None = None

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
        return "\n".join(lines) + "\n"

    def _command(self) -> list[str]:
        conf = self._workdir / "mosquitto.conf"
        conf.write_text(self._config())
        return [self._binary, "-c", str(conf)]


class AmqttBroker(BrokerProcess):
    """amqtt serving in a child Python process. It keeps no sessions across a restart."""

    kind = "amqtt"
    keeps_sessions = False

    def _command(self) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "amqtt", str(self.port)]


def make_broker(*, kind: str, workdir: Path, options: MosquittoOptions = MosquittoOptions()) -> BrokerProcess:
    """Build (not start) a broker.

    Args:
        kind: "mosquitto", "amqtt", or "auto" (mosquitto when its binary exists, else amqtt).
        workdir: an empty private directory for config, persistence and log.
        options: TLS / password settings; Mosquitto only.
    """
    binary = find_mosquitto()
    if kind == "auto":
        kind = "mosquitto" if binary else "amqtt"
    if kind == "mosquitto":
        if binary is None:
            raise RuntimeError("no mosquitto binary; install Debian's 'mosquitto' package")
        return MosquittoBroker(workdir=workdir, binary=binary, options=options)
    if kind == "amqtt":
        if options != MosquittoOptions():
            raise RuntimeError("TLS and password brokers need mosquitto")
        return AmqttBroker(workdir=workdir)
    raise ValueError(f"unknown broker kind {kind!r}; use auto, mosquitto or amqtt")


async def _serve_amqtt(port: int) -> None:
    from amqtt.broker import Broker

    broker = Broker({"listeners": {"default": {"type": "tcp", "bind": f"{HOST}:{port}"}}})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await broker.start()
    await stop.wait()
    await broker.shutdown()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "amqtt":
        sys.exit("usage: python tests/brokers.py amqtt PORT")
    asyncio.run(_serve_amqtt(int(sys.argv[2])))
