"""The generated protobuf messages and enums of brandkms.v1, in one namespace
(as the Rust SDK's `brandkms_proto::v1`): ``pb.SealCommandRequest``,
``pb.CARD_OP_DEBIT``, ``pb.CardOp.Name(...)``. The stubs are generated from
proto/proto by ``clients/python/build.sh``; the modules themselves are
``pb.admin_pb2``, ``pb.card_pb2_grpc`` and so on."""

# ruff: noqa: F401, F403
try:
    from ._gen.brandkms.v1 import (
        admin_pb2,
        admin_pb2_grpc,
        card_pb2,
        card_pb2_grpc,
        common_pb2,
        distribution_pb2,
        distribution_pb2_grpc,
        settlement_pb2,
        settlement_pb2_grpc,
    )
except ImportError as e:  # pragma: no cover
    raise ImportError(
        f"brandkms_client: the generated stubs are missing or broken ({e}); "
        "run clients/python/build.sh"
    ) from e

from ._gen.brandkms.v1.admin_pb2 import *
from ._gen.brandkms.v1.card_pb2 import *
from ._gen.brandkms.v1.common_pb2 import *
from ._gen.brandkms.v1.distribution_pb2 import *
from ._gen.brandkms.v1.settlement_pb2 import *
