"""The reader side that holds no key (clients/src/terminal.rs): a cybershop (or
the loading portal) relays bytes between brandkms, which authenticates the card
and seals the command, and the card, then has brandkms verify the card's
receipt."""

from __future__ import annotations

from dataclasses import dataclass

from . import pb
from .card import Card
from .client import Client
from .errors import BrandKmsError


class TransactionError(BrandKmsError):
    """A card transaction failed on the card's or the caller's side."""


class CardRejected(TransactionError):
    """brandkms did not authenticate the card (its C1 did not verify)."""

    def __init__(self) -> None:
        super().__init__("the card was not authenticated (wrong card key?)")


class ReceiptNotGenuine(TransactionError):
    """brandkms found the card's receipt not genuine."""

    def __init__(self) -> None:
        super().__init__("the card's receipt is not genuine")


def status_text(status: int) -> str:
    """``RECEIPT_STATUS_INSUFFICIENT_FUNDS`` as ``insufficient_funds``."""
    try:
        return pb.ReceiptStatus.Name(status).removeprefix("RECEIPT_STATUS_").lower()
    except ValueError:
        return str(status)


def op_text(op: int) -> str:
    """``CARD_OP_DEBIT`` as ``debit``."""
    try:
        return pb.CardOp.Name(op).removeprefix("CARD_OP_").lower()
    except ValueError:
        return str(op)


@dataclass
class Transaction:
    """A whole transaction's result: the session, the sealed command and the
    verified receipt."""

    session_id: str
    sealed: "pb.SealedCommand"
    receipt: "pb.ReceiptVerification"

    @property
    def ok(self) -> bool:
        """Whether the card applied the command (a genuine OK receipt)."""
        return self.receipt.genuine and self.receipt.status == pb.RECEIPT_STATUS_OK


def service_code(client: Client, alias: str) -> int:
    """The service code brandkms reports for ``alias`` among the caller's keys."""
    for k in client.list_entitled_keys():
        if k.alias == alias and k.HasField("service_code"):
            return k.service_code
    raise TransactionError(f"no tie-up of yours in force covers {alias!r}")


def authenticate(client: Client, card: Card, alias: str, service_code: int) -> str:
    """Passes 1 to 3 between brandkms and the card; returns the session id."""
    version = card.key_version(service_code)
    if version is None:
        raise TransactionError(f"the card holds no key for {alias} ({service_code:#06X})")
    challenge = client.begin_authentication(alias, card.card_id, version)
    c1 = card.answer_challenge(service_code, version, challenge.rb)
    result = client.complete_authentication(challenge.challenge_id, c1)
    if not result.authenticated:
        raise CardRejected()
    card.accept_service(result.c2)
    return result.session_id


def command(
    client: Client, card: Card, session_id: str, op: int, amount: int, currency: str
) -> "tuple[pb.SealedCommand, pb.ReceiptVerification]":
    """Seals ``op`` in the session, has the card process it, and verifies its
    receipt; raises ReceiptNotGenuine unless brandkms finds it genuine."""
    sealed = client.seal_command(session_id, op, amount, currency)
    receipt, receipt_mac = card.process(sealed.counter, sealed.payload, sealed.mac)
    verified = client.verify_receipt(session_id, sealed.counter, receipt, receipt_mac)
    if not verified.genuine:
        raise ReceiptNotGenuine()
    return sealed, verified


def transact(
    client: Client,
    card: Card,
    alias: str,
    service_code: int,
    op: int,
    amount: int,
    currency: str = "JPY",
) -> Transaction:
    """A whole card transaction: authenticate, seal, deliver, verify."""
    session_id = authenticate(client, card, alias, service_code)
    sealed, receipt = command(client, card, session_id, op, amount, currency)
    return Transaction(session_id, sealed, receipt)


def purchase(client: Client, card: Card, alias: str, amount: int, currency: str = "JPY") -> Transaction:
    """A cybershop's online purchase: a DEBIT of ``amount`` with the key ``alias``."""
    return transact(client, card, alias, service_code(client, alias), pb.CARD_OP_DEBIT, amount, currency)
