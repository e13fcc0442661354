"""Connection settings, resolved as kmsctl and the participant commands resolve
them (clients/src/kmsctl/connection.rs): each setting from the first place that
gives it, among explicit arguments, then the environment (``KMSCTL_ENDPOINT``,
``KMSCTL_CA``, ``KMSCTL_CERT``, ``KMSCTL_KEY``, ``KMSCTL_SERVER_NAME``), then a
profile file (``KMSCTL_PROFILE``, or ``~/.config/brandkms/kmsctl.toml`` when it
exists). A profile is TOML with the keys ``endpoint``, ``ca``, ``cert``, ``key``
and ``server_name``; relative paths in it are relative to its directory.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import ConfigError

DEFAULT_ENDPOINT = "https://127.0.0.1:7443"
PROFILE_KEYS = ("endpoint", "ca", "cert", "key", "server_name")

PathLike = Union[str, "os.PathLike[str]"]


def default_profile() -> Optional[Path]:
    """``~/.config/brandkms/kmsctl.toml``, when it exists."""
    home = os.environ.get("HOME")
    if not home:
        return None
    p = Path(home) / ".config" / "brandkms" / "kmsctl.toml"
    return p if p.exists() else None


def _split_endpoint(endpoint: str) -> "tuple[str, int]":
    if not endpoint.startswith("https://"):
        raise ConfigError(f"endpoint {endpoint!r}: expected https://HOST:PORT")
    rest = endpoint[len("https://"):].rstrip("/")
    if "/" in rest or not rest:
        raise ConfigError(f"endpoint {endpoint!r}: expected https://HOST:PORT")
    if rest.startswith("["):
        host, sep, port = rest[1:].partition("]")
        if not sep or (port and not port.startswith(":")):
            raise ConfigError(f"endpoint {endpoint!r}: bad IPv6 address")
        port = port[1:]
    else:
        host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    try:
        number = int(port) if port else 443
    except ValueError:
        raise ConfigError(f"endpoint {endpoint!r}: bad port") from None
    if not host or not 0 < number < 65536:
        raise ConfigError(f"endpoint {endpoint!r}: expected https://HOST:PORT")
    return host, number


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class Profile:
    """Where and as whom to connect: the endpoint (``https://HOST:PORT``), the
    brand CA that signed the server certificate, this caller's certificate and
    private key (PEM files), and the name the server certificate must carry."""

    endpoint: str
    ca: Path
    cert: Path
    key: Path
    server_name: Optional[str] = None

    def __post_init__(self) -> None:
        _split_endpoint(self.endpoint)

    @property
    def host(self) -> str:
        """The endpoint's host."""
        return _split_endpoint(self.endpoint)[0]

    @property
    def port(self) -> int:
        """The endpoint's port."""
        return _split_endpoint(self.endpoint)[1]

    @property
    def target(self) -> str:
        """The gRPC target, ``HOST:PORT``."""
        host, port = _split_endpoint(self.endpoint)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def tls_server_name(self) -> str:
        """The name checked against the server certificate: ``server_name``; else
        ``localhost`` for an IP address (what the Rust SDK does); else the host."""
        if self.server_name:
            return self.server_name
        host = self.host
        return "localhost" if _is_ip(host) else host

    def read_credentials(self) -> "tuple[bytes, bytes, bytes]":
        """The CA, certificate and key PEM bytes."""
        out = []
        for what, path in (
            ("CA certificate", self.ca),
            ("client certificate", self.cert),
            ("client key", self.key),
        ):
            try:
                out.append(Path(path).read_bytes())
            except OSError as e:
                raise ConfigError(f"cannot read {what} {path}: {e.strerror or e}") from None
        return out[0], out[1], out[2]

    @classmethod
    def load(
        cls,
        profile: Optional[PathLike] = None,
        *,
        endpoint: Optional[str] = None,
        ca: Optional[PathLike] = None,
        cert: Optional[PathLike] = None,
        key: Optional[PathLike] = None,
        server_name: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
    ) -> "Profile":
        """Resolves the settings: each from the explicit argument, else the
        environment (``KMSCTL_*``, ``env`` defaults to ``os.environ``), else the
        profile file (``profile``, else ``KMSCTL_PROFILE``, else the default
        profile). Raises ConfigError when the CA, certificate or key is missing."""
        env = os.environ if env is None else env

        def from_env(name: str) -> Optional[str]:
            value = env.get(f"KMSCTL_{name.upper()}")
            return value or None

        path = profile or from_env("profile") or default_profile()
        values: Dict[str, Any] = {}
        base = Path()
        if path:
            path = Path(path)
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as e:
                raise ConfigError(f"cannot read profile {path}: {e.strerror or e}") from None
            try:
                values = tomllib.loads(text)
            except tomllib.TOMLDecodeError as e:
                raise ConfigError(f"profile {path}: {e}") from None
            unknown = sorted(set(values) - set(PROFILE_KEYS))
            if unknown:
                raise ConfigError(f"profile {path}: unknown key(s) {', '.join(unknown)}")
            for k, v in values.items():
                if not isinstance(v, str):
                    raise ConfigError(f"profile {path}: {k} must be a string")
            base = path.parent

        def file(name: str, what: str, given: Optional[PathLike]) -> Path:
            if given:
                return Path(given)
            if from_env(name):
                return Path(str(from_env(name)))
            if values.get(name):
                p = Path(values[name])
                return p if p.is_absolute() else base / p
            raise ConfigError(
                f"no {what}: give --{name} ({name}=), KMSCTL_{name.upper()}, or a profile"
            )

        return cls(
            endpoint=endpoint or from_env("endpoint") or values.get("endpoint") or DEFAULT_ENDPOINT,
            ca=file("ca", "CA certificate", ca),
            cert=file("cert", "client certificate", cert),
            key=file("key", "client key", key),
            server_name=server_name or from_env("server_name") or values.get("server_name"),
        )


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """The connection options of kmsctl and the participant commands, for
    argparse: ``--profile``, ``--endpoint``, ``--ca``, ``--cert``, ``--key``,
    ``--server-name`` (each also read from its ``KMSCTL_*`` variable)."""
    group = parser.add_argument_group("connection")
    group.add_argument("--profile", help="profile file (TOML: endpoint, ca, cert, key, server_name) [env: KMSCTL_PROFILE]")
    group.add_argument("--endpoint", help="server, https://HOST:PORT [env: KMSCTL_ENDPOINT]")
    group.add_argument("--ca", help="brand CA certificate (PEM) [env: KMSCTL_CA]")
    group.add_argument("--cert", help="your certificate (PEM) [env: KMSCTL_CERT]")
    group.add_argument("--key", help="your private key (PEM) [env: KMSCTL_KEY]")
    group.add_argument(
        "--server-name",
        help="name the server certificate must carry (default: the endpoint's host, "
        "or localhost for an IP address) [env: KMSCTL_SERVER_NAME]",
    )


def profile_from_arguments(args: argparse.Namespace) -> Profile:
    """The Profile that parsed connection options (add_connection_arguments) give."""
    return Profile.load(
        args.profile,
        endpoint=args.endpoint,
        ca=args.ca,
        cert=args.cert,
        key=args.key,
        server_name=args.server_name,
    )
