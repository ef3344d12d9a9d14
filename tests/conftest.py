"""Shared fixtures that start real services and clean up after themselves.

MQTT (helpers in ``tests/brokers.py``):

- ``mqtt_broker``: a real broker for one test on a free 127.0.0.1 port: Mosquitto, or amqtt in
  a subprocess where no ``mosquitto`` binary exists (force one with
  ``pytest --mqtt-broker=amqtt|mosquitto``). Attributes: ``.host``, ``.port``, ``.url``
  ("mqtt://127.0.0.1:PORT"), ``.kind`` ("mosquitto" or "amqtt"), ``.keeps_sessions`` (whether
  persistent sessions survive a restart: True for Mosquitto, False for amqtt). Methods:
  ``.stop()``, ``.start()`` (again on the SAME port), ``.log()``. ``stop``/``start`` block for
  milliseconds; in async tests call ``await asyncio.to_thread(mqtt_broker.stop)``.
- ``mqtt_broker_factory``: ``mqtt_broker_factory(options=MosquittoOptions(...))`` starts another
  broker (e.g. TLS or password-protected; those need Mosquitto and skip without it). Every
  broker it started is stopped at teardown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from brokers import BrokerProcess, MosquittoOptions, find_mosquitto, make_broker


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``-n 2 --dist loadgroup``, pyproject's addopts) a module's tests run in
    one worker (its module-scoped fixtures are built once), and every test that starts Ray runs
    in one worker, one after the other: two Ray instances at once would halve what each gets of
    the 2 cores, and the "Ray already runs on this host" test must see only its own."""
    for item in items:
        group = "ray" if item.get_closest_marker("cluster") else item.nodeid.split("::", 1)[0]
        item.add_marker(pytest.mark.xdist_group(group))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--mqtt-broker",
        choices=("auto", "mosquitto", "amqtt"),
        default="auto",
        help="MQTT broker for the tests: mosquitto when installed (auto), or force one",
    )


@pytest.fixture
def mqtt_broker_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., BrokerProcess]]:
    started: list[BrokerProcess] = []

    def start(options: MosquittoOptions = MosquittoOptions()) -> BrokerProcess:
        kind = request.config.getoption("--mqtt-broker")
        if options != MosquittoOptions():
            if find_mosquitto() is None:
                pytest.skip("TLS and password brokers need the mosquitto binary (.ci/run installs it)")
            kind = "mosquitto"
        broker = make_broker(kind=kind, workdir=tmp_path_factory.mktemp("broker"), options=options)
        started.append(broker)
        broker.start()
        return broker

    yield start
    for broker in started:
        broker.stop()


@pytest.fixture
def mqtt_broker(mqtt_broker_factory: Callable[..., BrokerProcess]) -> BrokerProcess:
    return mqtt_broker_factory()
