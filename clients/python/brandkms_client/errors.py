"""What can go wrong, as exceptions: the Python side of the Rust SDK's
`ClientError` (clients/src/sdk.rs)."""

from __future__ import annotations

from typing import Dict, Optional

import grpc


class BrandKmsError(Exception):
    """Every error of this package."""


class ConfigError(BrandKmsError):
    """The connection settings are unusable (a missing or unreadable file, a bad
    profile, a bad endpoint)."""


class ConnectError(BrandKmsError):
    """The server could not be reached, or the TLS handshake failed."""

    def __init__(self, endpoint: str, detail: str) -> None:
        super().__init__(f"cannot connect to {endpoint}: {detail}")
        self.endpoint = endpoint


def code_name(code: grpc.StatusCode) -> str:
    """`PERMISSION_DENIED` as the Rust tools print it: `PermissionDenied`."""
    return "".join(part.capitalize() for part in code.name.split("_"))


def status_code(value: int) -> Optional[grpc.StatusCode]:
    """The `grpc.StatusCode` of a `google.rpc.Code` number (as `ItemError.code`)."""
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code
    return None


class RpcError(BrandKmsError):
    """The server answered with an error status.

    Attributes:
        code: the gRPC status code.
        message: the server's message (for a policy refusal, e.g.
            ``rule 5 (limit_exceeded): ...``).
        reason: a policy refusal's rule code, the ``google.rpc.ErrorInfo``
            reason (e.g. ``limit_exceeded``), when the server sent one.
        domain: the ErrorInfo's domain (``brandkms.v1``).
        metadata: the ErrorInfo's metadata (``rule``: the rule's number).
        retry_after: seconds to wait before retrying (``google.rpc.RetryInfo``),
            when the server said (``RESOURCE_EXHAUSTED`` over a rate limit).
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: Optional[str] = None,
        domain: Optional[str] = None,
        metadata: Optional[Dict[str, str]] = None,
        retry_after: Optional[float] = None,
    ) -> None:
        text = f"{code_name(code)}: {message}"
        if reason and reason not in message:
            text += f" (reason {reason})"
        super().__init__(text)
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata = dict(metadata or {})
        self.retry_after = retry_after

    @classmethod
    def from_grpc(cls, error: grpc.RpcError) -> "RpcError":
        """Reads the status of a failed call, with its rich error details
        (``grpc-status-details-bin``: ErrorInfo, RetryInfo) when present."""
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        message = (error.details() if hasattr(error, "details") else None) or ""
        reason = domain = retry_after = None
        metadata: Dict[str, str] = {}
        try:
            from google.rpc import error_details_pb2
            from grpc_status import rpc_status

            status = rpc_status.from_call(error)
        except (ImportError, ValueError, AttributeError):
            status = None
        if status is not None:
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
                elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    retry = error_details_pb2.RetryInfo()
                    detail.Unpack(retry)
                    retry_after = retry.retry_delay.ToTimedelta().total_seconds()
        return cls(code or grpc.StatusCode.UNKNOWN, message, reason, domain, metadata, retry_after)
