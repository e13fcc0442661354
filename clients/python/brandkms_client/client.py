"""A connection to brandkms over mTLS, with the calls a cybershop and a clearing
house make (the Python side of clients/src/sdk.rs). Every failed call raises
RpcError with the status code, the message and, for a policy refusal, the
rule's code (``reason``)."""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, List, Tuple, TypeVar

import grpc

from . import pb
from .errors import ConnectError, RpcError
from .profile import Profile

T = TypeVar("T")


class Client:
    """A channel to brandkms with the caller's certificate.

    ``Client.connect(profile)`` opens it and waits until the TLS handshake
    succeeds (or raises ConnectError); use it as a context manager, or
    ``close()`` it. Unary calls time out after ``timeout`` seconds (60 by
    default, as in the Rust SDK); streams have no deadline.
    """

    def __init__(self, profile: Profile, *, timeout: float = 60.0) -> None:
        ca, cert, key = profile.read_credentials()
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )
        options: List[Tuple[str, object]] = []
        name = profile.tls_server_name
        if name != profile.host:
            # The name checked against the server certificate (and sent as the
            # authority), when it is not the endpoint's host (an IP address).
            options.append(("grpc.ssl_target_name_override", name))
        self.profile = profile
        self.timeout = timeout
        self.channel = grpc.secure_channel(profile.target, credentials, options)
        self._distribution = pb.distribution_pb2_grpc.KeyDistributionStub(self.channel)
        self._cards = pb.card_pb2_grpc.CardAuthenticationStub(self.channel)
        self._settlement = pb.settlement_pb2_grpc.SettlementStub(self.channel)

    @classmethod
    def connect(cls, profile: Profile, *, connect_timeout: float = 10.0, timeout: float = 60.0) -> "Client":
        """Opens the channel and waits (at most ``connect_timeout`` seconds) until
        it is ready: the server reached and the mutual TLS handshake done."""
        client = cls(profile, timeout=timeout)
        try:
            grpc.channel_ready_future(client.channel).result(timeout=connect_timeout)
        except grpc.FutureTimeoutError:
            client.close()
            raise ConnectError(
                profile.endpoint,
                f"not ready within {connect_timeout:g} s (server down, or the TLS "
                "handshake failed: check the CA, certificate, key and server name)",
            ) from None
        return client

    def close(self) -> None:
        """Closes the channel."""
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: Callable[..., T], request: object) -> T:
        """Calls a unary method of a generated stub (on ``self.channel``) with the
        client's deadline; a failure raises RpcError."""
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise RpcError.from_grpc(e) from None

    # KeyDistribution: what the caller is entitled to.

    def list_entitled_keys(self) -> List["pb.EntitledKey"]:
        """Every key the caller may receive or have used for it (all pages)."""
        keys: List[pb.EntitledKey] = []
        token = ""
        while True:
            page = self.call(
                self._distribution.ListEntitledKeys,
                pb.ListEntitledKeysRequest(page_size=1000, page_token=token),
            )
            keys.extend(page.keys)
            token = page.next_page_token
            if not token:
                return keys

    # CardAuthentication: the proxy card authentication of docs/protocol.md.

    def begin_authentication(self, alias: str, card_id: bytes, key_version: int = 0) -> "pb.Challenge":
        """Pass 1: a challenge RB for the card ``card_id`` (8 bytes) and the key
        version the card reports (0: the active one)."""
        return self.call(
            self._cards.BeginAuthentication,
            pb.BeginAuthenticationRequest(alias=alias, key_version=key_version, card_id=card_id),
        )

    def complete_authentication(self, challenge_id: str, c1: bytes) -> "pb.AuthenticationResult":
        """Passes 2 and 3: the card's C1; on success C2 and a session."""
        return self.call(
            self._cards.CompleteAuthentication,
            pb.CompleteAuthenticationRequest(challenge_id=challenge_id, c1=c1),
        )

    def seal_command(self, session_id: str, op: int, amount: int, currency: str) -> "pb.SealedCommand":
        """A command (``pb.CARD_OP_DEBIT``, ...) sealed for the card in the session."""
        return self.call(
            self._cards.SealCommand,
            pb.SealCommandRequest(session_id=session_id, op=op, amount=amount, currency=currency),
        )

    def verify_receipt(self, session_id: str, counter: int, payload: bytes, mac: bytes) -> "pb.ReceiptVerification":
        """Whether the card's receipt is genuine, and what it says."""
        return self.call(
            self._cards.VerifyReceipt,
            pb.VerifyReceiptRequest(session_id=session_id, counter=counter, payload=payload, mac=mac),
        )

    # Settlement: public keys, decryption, signatures, MACs.

    def get_public_key(self, alias: str, version: int = 0) -> "pb.PublicKey":
        """A settlement key version's public key and OAEP parameters (0: active)."""
        return self.call(self._settlement.GetPublicKey, pb.GetPublicKeyRequest(alias=alias, version=version))

    def decrypt(self, alias: str, ciphertext: bytes, version: int = 0) -> bytes:
        """Decrypts an RSA-OAEP ciphertext in the token (clearing houses, owners)."""
        r = self.call(
            self._settlement.Decrypt,
            pb.DecryptRequest(alias=alias, version=version, ciphertext=ciphertext),
        )
        return r.plaintext

    def decrypt_stream(self, items: Iterable[Tuple[int, bytes]]) -> Iterator["pb.DecryptResult"]:
        """Streams (index, sealed blob) pairs in and one DecryptResult per blob out,
        in order; a blob that fails gives a result with ``error`` set and does
        not stop the stream. ``items`` is consumed as the stream needs it."""
        requests = (pb.DecryptItem(index=index, blob=blob) for index, blob in items)
        call = self._settlement.DecryptStream(requests)
        try:
            for result in call:
                yield result
        except grpc.RpcError as e:
            raise RpcError.from_grpc(e) from None
        finally:
            # A consumer that stops early ends the stream (a no-op once it is done).
            call.cancel()

    def sign(self, alias: str, data: bytes) -> "pb.SignResponse":
        """Signs with the settlement key's active version (RSA-PSS SHA-256)."""
        return self.call(self._settlement.Sign, pb.SignRequest(alias=alias, data=data))

    def verify(self, alias: str, version: int, data: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is valid for ``data`` under the key version."""
        r = self.call(
            self._settlement.Verify,
            pb.VerifyRequest(alias=alias, version=version, data=data, signature=signature),
        )
        return r.valid

    def generate_mac(self, alias: str, data: bytes) -> "pb.GenerateMacResponse":
        """HMAC-SHA-256 of a settlement result with an authenticator key."""
        return self.call(self._settlement.GenerateMac, pb.GenerateMacRequest(alias=alias, data=data))

    def verify_mac(self, alias: str, version: int, data: bytes, mac: bytes) -> bool:
        """Whether ``mac`` is the authenticator key version's MAC of ``data``."""
        r = self.call(
            self._settlement.VerifyMac,
            pb.VerifyMacRequest(alias=alias, version=version, data=data, mac=mac),
        )
        return r.valid

    def __repr__(self) -> str:
        return f"Client({self.profile.endpoint})"


__all__ = ["Client"]
