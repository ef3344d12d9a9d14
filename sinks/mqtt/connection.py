"""The connection loop the sink and ``das-stream subscribe`` share: connect, run a session,
reconnect with exponential backoff when the connection breaks; give up only when retrying cannot
help (credentials refused, a certificate not trusted)."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

from core.errors import SinkError

from .settings import MqttSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

# CONNACK refusals worth retrying; any other refusal (credentials, client id, ACL) is final.
_RETRYABLE_REFUSALS = {"Server unavailable", "Server busy"}


def _fatal_error(exc: aiomqtt.MqttError, settings: MqttSettings) -> SinkError | None:
    """A SinkError when ``exc`` means retrying cannot help (credentials, TLS trust), else None."""
    if isinstance(exc, MqttConnectError) and str(exc.rc) not in _RETRYABLE_REFUSALS:
        return SinkError(
            f"MQTT broker {settings.url} refused the connection ({exc.rc}); "
            "check the user name and password in --mqtt and the client id"
        )
    if isinstance(exc.__context__, ssl.SSLCertVerificationError):
        return SinkError(
            f"TLS certificate of MQTT broker {settings.url} not trusted ({exc.__context__.verify_message}); "
            "give the CA certificate that signed it as the TLS CA file"
        )
    return None


async def keep_connected(
    settings: MqttSettings,
    session: Callable[[aiomqtt.Client], Awaitable[T]],
    *,
    role: str = "",
    name: str = "mqtt",
) -> T:
    """Run ``session`` on a connected client, reconnecting with exponential backoff.

    Whenever the connection fails or ``session`` raises ``MqttError``, wait (``reconnect_min``,
    doubling up to ``reconnect_max``), connect again and call ``session`` again.

    Args:
        settings: the broker.
        session: the work to do while connected; its return value is returned.
        role: picks the default client id (see :meth:`MqttSettings.client`).
        name: who is connecting, for the log.

    Raises:
        SinkError: the broker refused the credentials or its certificate is not trusted.
    """
    delay = settings.reconnect_min
    while True:
        try:
            async with settings.client(role=role) as client:
                delay = settings.reconnect_min
                log.info("%s: connected to %s", name, settings.url)
                return await session(client)
        except aiomqtt.MqttError as exc:
            fatal = _fatal_error(exc, settings)
            if fatal is not None:
                raise fatal from None
            log.log(
                logging.WARNING if delay == settings.reconnect_min else logging.DEBUG,
                "%s: broker %s unavailable (%s); retrying in %.2f s",
                name,
                settings.url,
                exc,
                delay,
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, settings.reconnect_max)
