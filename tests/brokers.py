"""Real MQTT brokers for tests: a Mosquitto process, or an amqtt broker in a subprocess.

Mosquitto is preferred (``.ci/run`` installs it); where no ``mosquitto`` binary exists the tests
fall back to amqtt, never to a mock. Both run as child processes on a free 127.0.0.1 port, with
the launcher ``das-stream bench`` uses (:mod:`streamer.bench.broker`), so ``stop()`` really
closes every connection and ``start()`` brings the broker back on the same port.

Run as a script (``python tests/brokers.py amqtt PORT``) it serves amqtt on 127.0.0.1:PORT until
SIGTERM; that is how :class:`AmqttBroker` starts its child.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from streamer.bench.broker import (
    HOST,
    BrokerProcess,
    MosquittoBroker,
    MosquittoOptions,
    find_mosquitto,
    free_port,
)

__all__ = [
    "AmqttBroker",
    "BrokerProcess",
    "MosquittoBroker",
    "MosquittoOptions",
    "find_mosquitto",
    "free_port",
    "make_broker",
]


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
