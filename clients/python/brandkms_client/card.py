"""A software IC card of the brand: the card side of docs/protocol.md, a third
implementation beside the service's and the Rust simulator's
(clients/src/card/mod.rs), with the DES/TDES primitives of ``cryptography`` (as
tests/old_hsm.py). It holds one card key K_C per (service code, key version), a
balance and a maximum balance; answers challenges (C1), checks the service's C2,
derives the session key K_S, checks sealed commands' MACs and counters,
applies LOAD / DEBIT / READ_BALANCE and answers MACed receipts.

Its file is the Rust simulator's JSON card file (``card_id``, ``keys``,
``balance``, ``max_balance``, ``currency``), written with mode 0600, so the
same card works with the Rust commands (``cybershop purchase --card``) and
this package. A session lives in memory only: it is not written to the file.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import warnings
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import List, Optional, Tuple, Union

from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, modes

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:
        from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    except ImportError:  # cryptography before 43
        from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES

PAYLOAD_LEN = 29
TO_CARD = 0x01
FROM_CARD = 0x02
OP_LOAD = 0x10
OP_DEBIT = 0x20
OP_READ_BALANCE = 0x30


class Status(IntEnum):
    """Receipt statuses (docs/protocol.md §3)."""

    OK = 0x00
    INSUFFICIENT_FUNDS = 0x01
    LIMIT_EXCEEDED = 0x02
    BAD_MAC = 0x03
    BAD_COUNTER = 0x04
    UNSUPPORTED = 0x05


class CardError(Exception):
    """What the card refuses outright (no receipt can be made)."""


class ServiceNotAuthenticated(CardError):
    """C2 does not decrypt to RB || RA: the service is not genuine."""

    def __init__(self) -> None:
        super().__init__("the service's cryptogram C2 does not verify: service not authenticated")


def _tdes(key: bytes) -> TripleDES:
    """A DES (8 bytes), two-key (16) or three-key (24) TDES key, given to
    ``cryptography`` as the equivalent three-key TDES key."""
    if len(key) == 8:
        key = key * 3
    elif len(key) == 16:
        key = key + key[:8]
    elif len(key) != 24:
        raise CardError("a DES key is 8, 16 or 24 bytes")
    return TripleDES(key)


def _blocks(data: bytes, n: int, what: str) -> bytes:
    if len(data) != n:
        raise CardError(f"{what} is {n} bytes")
    return bytes(data)


def ecb_encrypt(key: bytes, block: bytes) -> bytes:
    """``E_K(block)``: DES, two-key or three-key TDES, ECB, one 8-byte block."""
    e = Cipher(_tdes(key), modes.ECB()).encryptor()
    return e.update(_blocks(block, 8, "a block")) + e.finalize()


def cbc_encrypt(key: bytes, data: bytes) -> bytes:
    """``CBC_K(X)``: two-key TDES, IV zero, no padding, 16 bytes."""
    e = Cipher(_tdes(_blocks(key, 16, "K_C")), modes.CBC(bytes(8))).encryptor()
    return e.update(_blocks(data, 16, "the data")) + e.finalize()


def cbc_decrypt(key: bytes, data: bytes) -> bytes:
    """The inverse of cbc_encrypt."""
    d = Cipher(_tdes(_blocks(key, 16, "K_C")), modes.CBC(bytes(8))).decryptor()
    return d.update(_blocks(data, 16, "the cryptogram")) + d.finalize()


def diversify(master: bytes, cid: bytes) -> bytes:
    """EMV Option A with Y = CID: ``K_C = E_KM(CID) || E_KM(CID xor FF..FF)``."""
    cid = _blocks(cid, 8, "a card id")
    return ecb_encrypt(master, cid) + ecb_encrypt(master, bytes(b ^ 0xFF for b in cid))


def session_key(kc: bytes, ra: bytes, rb: bytes) -> bytes:
    """``K_S = E_KC(RA[0..4] || RB[0..4]) || E_KC(RA[4..8] || RB[4..8])``."""
    ra, rb = _blocks(ra, 8, "RA"), _blocks(rb, 8, "RB")
    return ecb_encrypt(kc, ra[:4] + rb[:4]) + ecb_encrypt(kc, ra[4:] + rb[4:])


def kcv(key: bytes) -> bytes:
    """The key check value: ``E_K(00 x 8)[0..3]``."""
    return ecb_encrypt(key, bytes(8))[:3]


def mac(ks: bytes, direction: int, counter: int, payload: bytes) -> bytes:
    """``CMAC_KS(direction || counter || payload)``, TDES-CMAC, 8 bytes."""
    c = cmac.CMAC(_tdes(_blocks(ks, 16, "K_S")))
    c.update(bytes([direction]) + counter.to_bytes(4, "big") + payload)
    return c.finalize()


def command_payload(op: int, amount: int, currency: str, txn_id: bytes) -> bytes:
    """A command payload (the service builds these; here for tests)."""
    return bytes([0x01, op]) + amount.to_bytes(8, "big") + currency.encode("ascii") + _blocks(txn_id, 16, "a txn id")


def receipt_payload(status: int, balance: int, currency: bytes, txn_id: bytes) -> bytes:
    """A receipt payload: version, status, balance, currency, txn id (29 bytes)."""
    return bytes([0x01, status]) + balance.to_bytes(8, "big") + currency + txn_id


@dataclass
class CardKey:
    """One card key K_C (16 bytes) for a master's service code and version."""

    service_code: int
    version: int
    key: bytes = field(repr=False)


@dataclass
class _Pending:
    key: bytes
    ra: bytes
    rb: bytes


@dataclass
class _Session:
    ks: bytes
    last_counter: Optional[int] = None


class Card:
    """The card. Keys and session state never appear in its repr."""

    def __init__(
        self,
        card_id: bytes,
        keys: List[CardKey],
        balance: int,
        max_balance: int = 100_000,
        currency: str = "JPY",
    ) -> None:
        self.card_id = _blocks(card_id, 8, "a card id")
        self.keys = list(keys)
        self.balance = balance
        self.max_balance = max_balance
        self.currency = currency
        self._pending: Optional[_Pending] = None
        self._session: Optional[_Session] = None

    def __repr__(self) -> str:
        keys = ", ".join(f"{k.service_code:#06X} v{k.version}" for k in self.keys)
        return f"Card({self.card_id.hex().upper()}, keys [{keys}], balance {self.balance} {self.currency})"

    @classmethod
    def personalise_from_master(
        cls,
        master: bytes,
        card_id: bytes,
        service_code: int,
        version: int = 1,
        balance: int = 0,
        max_balance: int = 100_000,
        currency: str = "JPY",
    ) -> "Card":
        """A card whose key is diversified from ``master`` (as an issuer does in
        its own token, or the old HSM of tests/old_hsm.py)."""
        kc = diversify(master, card_id)
        return cls(card_id, [CardKey(service_code, version, kc)], balance, max_balance, currency)

    @classmethod
    def load(cls, path: Union[str, "os.PathLike[str]"]) -> "Card":
        """Reads a card file (the Rust simulator's JSON)."""
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(
                bytes.fromhex(doc["card_id"]),
                [CardKey(int(k["service_code"]), int(k["version"]), bytes.fromhex(k["key"])) for k in doc["keys"]],
                int(doc["balance"]),
                int(doc["max_balance"]),
                str(doc["currency"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CardError(f"card file {path}: {e}") from None

    def save(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Writes the card file (mode 0600, replaced atomically)."""
        doc = {
            "card_id": self.card_id.hex().upper(),
            "keys": [
                {"service_code": k.service_code, "version": k.version, "key": k.key.hex().upper()}
                for k in self.keys
            ],
            "balance": self.balance,
            "max_balance": self.max_balance,
            "currency": self.currency,
        }
        path = Path(path)
        tmp = path.with_suffix(".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            raise CardError(f"card file {path}: {e}") from None

    def key_version(self, service_code: int) -> Optional[int]:
        """The newest key version the card holds for ``service_code`` (what a
        terminal reads before authentication starts)."""
        versions = [k.version for k in self.keys if k.service_code == service_code]
        return max(versions) if versions else None

    def _key(self, service_code: int, version: int) -> bytes:
        for k in self.keys:
            if k.service_code == service_code and k.version == version:
                return _blocks(k.key, 16, "K_C")
        raise CardError(f"the card has no key for service code {service_code:#06X} version {version}")

    def answer_challenge(self, service_code: int, version: int, rb: bytes, ra: Optional[bytes] = None) -> bytes:
        """Pass 2: draws RA (or takes it, to reproduce the vectors) and answers
        ``C1 = CBC_KC(RA || RB)``."""
        kc = self._key(service_code, version)
        ra = secrets.token_bytes(8) if ra is None else _blocks(ra, 8, "RA")
        rb = _blocks(rb, 8, "RB")
        c1 = cbc_encrypt(kc, ra + rb)
        self._session = None
        self._pending = _Pending(kc, ra, rb)
        return c1

    def accept_service(self, c2: bytes) -> None:
        """Pass 3: accepts the service only if C2 decrypts to RB || RA; then
        derives K_S. Raises ServiceNotAuthenticated otherwise."""
        pending, self._pending = self._pending, None
        if pending is None:
            raise CardError("no authentication in progress")
        plain = cbc_decrypt(pending.key, _blocks(c2, 16, "C2"))
        if not hmac.compare_digest(plain, pending.rb + pending.ra):
            raise ServiceNotAuthenticated()
        self._session = _Session(session_key(pending.key, pending.ra, pending.rb))

    @property
    def in_session(self) -> bool:
        """Whether a session is open."""
        return self._session is not None

    def process(self, counter: int, payload: bytes, command_mac: bytes) -> Tuple[bytes, bytes]:
        """Processes a sealed command; answers the receipt payload and its MAC. A
        bad MAC or counter changes nothing on the card and is answered with its
        status."""
        session = self._session
        if session is None:
            raise CardError("no authenticated session")
        payload = _blocks(payload, PAYLOAD_LEN, "a command payload")
        currency = self.currency.encode("ascii")
        if len(currency) != 3:
            raise CardError("the card's currency is not 3 letters")
        txn_id = payload[13:29]
        expected = mac(session.ks, TO_CARD, counter, payload)
        if not hmac.compare_digest(expected, bytes(command_mac)):
            status = Status.BAD_MAC
        elif session.last_counter is not None and counter <= session.last_counter:
            status = Status.BAD_COUNTER
        else:
            session.last_counter = counter
            status = self._apply(payload)
        receipt = receipt_payload(status, self.balance, currency, txn_id)
        return receipt, mac(session.ks, FROM_CARD, counter, receipt)

    def _apply(self, p: bytes) -> Status:
        amount = int.from_bytes(p[2:10], "big")
        if p[0] != 0x01 or p[10:13] != self.currency.encode("ascii"):
            return Status.UNSUPPORTED
        if p[1] == OP_LOAD:
            if self.balance + amount > self.max_balance:
                return Status.LIMIT_EXCEEDED
            self.balance += amount
            return Status.OK
        if p[1] == OP_DEBIT:
            if amount > self.balance:
                return Status.INSUFFICIENT_FUNDS
            self.balance -= amount
            return Status.OK
        if p[1] == OP_READ_BALANCE:
            return Status.OK
        return Status.UNSUPPORTED
