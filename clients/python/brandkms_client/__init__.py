"""brandkms_client: a Python client of brandkms.

- ``Profile``: where and as whom to connect (endpoint, CA, certificate, key),
  from arguments, ``KMSCTL_*`` variables or a kmsctl profile file;
- ``Client``: the mTLS channel and the calls a cybershop and a clearing house
  make, failures raised as ``RpcError`` (code, message, refusal reason);
- ``cybershop``: a card transaction by proxy (authenticate, seal, verify);
- ``clearing``: sealed blobs and settlement files through DecryptStream;
- ``card``: a software card (docs/protocol.md).

The gRPC stubs are generated from proto/proto by ``clients/python/build.sh``.
"""

from . import card, clearing, cybershop, pb
from .card import Card, CardError
from .client import Client
from .errors import BrandKmsError, ConfigError, ConnectError, RpcError
from .profile import Profile

__all__ = [
    "BrandKmsError",
    "Card",
    "CardError",
    "Client",
    "ConfigError",
    "ConnectError",
    "Profile",
    "RpcError",
    "card",
    "clearing",
    "cybershop",
    "pb",
]
