"""Which Ray a cluster run uses, and how it gets there: one documented rule (docs/scale-out.md).

- ``--address HOST:PORT`` (or ``RAY_ADDRESS``) joins that cluster (one started with ``ray start
  --head``); ``--address auto`` joins the Ray already running on this host. Before Ray is asked,
  the address is probed: it must answer within ``connect_timeout``, and when it requires Ray's
  token authentication a token must be on this host and accepted (``RAY_AUTH_TOKEN``, the file
  ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``, as Ray reads it); each failure is one line.
- Without an address a *private* Ray instance starts for the run, even where another Ray runs on
  the host (it is never joined by accident): its files live in :func:`private_temp_dir`, it
  talks over 127.0.0.1 only, and ``cluster status`` without ``--address`` reads it.

Loopback: Ray rewrites 127.0.0.1 to the host's network address unless it runs in its single-host
mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, Ray's own switch, named for the platforms where it
is the default). A private instance, and any address on 127.0.0.1, use that mode: the GCS, the
raylet, the workers and the agents then listen on 127.0.0.1 only. Ray Serve 2.60 opens one more
port per replica (inter-deployment gRPC) on all interfaces whatever the mode; nothing of ours
connects to it from outside, and docs/scale-out.md says to firewall it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from core.errors import ConfigError

LOOPBACK = "127.0.0.1"
_SINGLE_HOST = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
WORKER_NICENESS = "RAY_worker_niceness"  # Ray's own setting (RayConfig worker_niceness, default 15)
_TOKEN_HELP = (
    "copy the head node's token file (~/.ray/auth_token, or `ray get-auth-token` there) to this host's "
    "~/.ray/auth_token, or point RAY_AUTH_TOKEN_PATH at it"
)


def private_temp_dir() -> str:
    """Where this user's private Ray instances keep their files (short: Ray's socket paths must fit)."""
    return os.path.join(tempfile.gettempdir(), f"das-stream-ray-{os.getuid()}")


def address_file() -> Path:
    """The file naming the private instance that runs now (written and removed by the driver)."""
    return Path(private_temp_dir()) / "ray_current_cluster"


def loopback_only() -> None:
    """Ray in this process and the processes it starts keep 127.0.0.1 as the node address."""
    os.environ[_SINGLE_HOST] = "0"
    from ray._private import ray_constants  # read once at import: the switch must be set there too

    ray_constants.ENABLE_RAY_CLUSTER = False


@dataclass(frozen=True)
class Address:
    """A parsed Ray address: ``HOST:PORT`` (the GCS) or ``ray://HOST:PORT`` (a Ray Client server)."""

    text: str
    host: str
    port: int
    client: bool

    @classmethod
    def parse(cls, address: str) -> Address:
        parts = urlsplit(address if "://" in address else f"tcp://{address}")
        try:
            host, port = parts.hostname, parts.port
        except ValueError:
            host, port = None, None
        if not host or not port or parts.scheme not in ("tcp", "ray"):
            raise ConfigError(
                f"Ray address {address!r} is not HOST:PORT or ray://HOST:PORT; e.g. --address 10.0.0.5:6379 "
                "(the head node's `ray start --head --port`)"
            )
        return cls(address, host, port, parts.scheme == "ray")


def resolve(address: str) -> Address:
    """The address to join: ``auto`` is the Ray running on this host (as ``ray status`` finds it)."""
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address

        found = canonicalize_bootstrap_address("auto")
        if found is None:
            raise ConfigError(
                "--address auto: no Ray is running on this host; start one with `ray start --head`, give its "
                "HOST:PORT, or leave --address out to start a private instance"
            )
        address = found
    return Address.parse(address)


def probe(addr: Address, timeout: float) -> None:
    """Check that ``addr`` answers and, where it requires Ray's token authentication, that this host
    has a token it accepts (turning token mode on for this process, as Ray does for ``auto``).

    Raises:
        ConfigError: in one line, naming the address and the fix.
    """
    import grpc  # Ray's own transport

    channel = grpc.insecure_channel(f"{addr.host}:{addr.port}")
    try:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise ConfigError(
                f"Ray cluster at {addr.text} did not answer within {timeout:g} s; "
                "check --address / RAY_ADDRESS, or leave it out to start a private Ray instance"
            ) from None
        if addr.client:  # a Ray Client server: Ray checks its own way when it connects
            return
        if _call(channel, (), timeout) != grpc.StatusCode.UNAUTHENTICATED:
            return
        from ray._private.authentication.authentication_token_setup import _enable_token_auth
        from ray._raylet import AuthenticationTokenLoader  # type: ignore[attr-defined]  # not in Ray's stubs

        loader = AuthenticationTokenLoader.instance()
        loader.reset_cache()
        if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token":
            raise ConfigError(
                f"the Ray cluster at {addr.text} requires a token but RAY_AUTH_MODE="
                f"{os.environ['RAY_AUTH_MODE']} here; unset it (or set it to token) and {_TOKEN_HELP}"
            )
        if not loader.has_token(ignore_auth_mode=True):
            raise ConfigError(
                f"the Ray cluster at {addr.text} requires a token (Ray token authentication); {_TOKEN_HELP}"
            )
        _enable_token_auth()  # RAY_AUTH_MODE=token for this process and the ones it starts, as Ray does for `auto`
        header = tuple(loader.get_token_for_http_header().items())
        if _call(channel, header, timeout) == grpc.StatusCode.UNAUTHENTICATED:
            raise ConfigError(f"the Ray cluster at {addr.text} refused this host's token; {_TOKEN_HELP}")
    finally:
        channel.close()


def _call(channel, metadata: tuple, timeout: float):
    """The status of one cheap GCS call (``GetClusterId``) with ``metadata``; None when it succeeded."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
    try:
        request = gcs_service_pb2.GetClusterIdRequest()  # type: ignore[attr-defined]  # generated, no stubs
        stub.GetClusterId(request, metadata=metadata, timeout=timeout)
    except grpc.RpcError as exc:
        return exc.code()
    return None


def join(address: str, *, timeout: float, namespace: str, log_to_driver: bool = True) -> Address:
    """Connect this process to the Ray cluster at ``address`` (see the module docstring)."""
    import ray

    addr = resolve(address)
    if addr.host == LOOPBACK:
        loopback_only()
    probe(addr, timeout)
    try:
        ray.init(address=addr.text, namespace=namespace, logging_level=logging.WARNING, log_to_driver=log_to_driver)
    except (ConnectionError, RuntimeError) as exc:
        raise ConfigError(f"could not join the Ray cluster at {addr.text}: {str(exc).splitlines()[0]}") from None
    return addr


def start_private(*, num_cpus: int, namespace: str, log_to_driver: bool = True, **options) -> Address:
    """Start a private Ray instance on 127.0.0.1 for this process (see the module docstring)."""
    import ray

    loopback_only()
    # Ray runs its workers at niceness 15, below every other process on the host: with anything
    # else busy the stream actors (paced, real-time work) starved (a file replay's restart took
    # over 240 s beside two CPU-bound processes). A private instance runs them at 0 unless told.
    os.environ.setdefault(WORKER_NICENESS, "0")
    ray.init(
        address="local",  # never an instance already running on the host
        num_cpus=num_cpus,
        include_dashboard=False,
        namespace=namespace,
        logging_level=logging.WARNING,
        log_to_driver=log_to_driver,
        _temp_dir=private_temp_dir(),
        **options,
    )
    addr = Address.parse(ray.get_runtime_context().gcs_address)
    path = address_file()
    tmp = path.with_suffix(f".{os.getpid()}")
    tmp.write_text(addr.text)
    tmp.replace(path)  # what `cluster status` without --address reads
    return addr


def forget_private(addr: Address) -> None:
    """Remove the record of a private instance that is shutting down (if it is still this one's)."""
    path = address_file()
    try:
        if path.read_text().strip() == addr.text:
            path.unlink()
    except OSError:
        pass


def recorded_private() -> Address:
    """The private instance running on this host now (``cluster status`` without ``--address``)."""
    path = address_file()
    try:
        text = path.read_text().strip()
    except OSError:
        raise ConfigError(
            f"no das-stream cluster is running on this host (nothing recorded in {path}); "
            "give --address HOST:PORT for one that runs elsewhere"
        ) from None
    return Address.parse(text)
