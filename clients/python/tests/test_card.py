"""The Python software card against docs/protocol.md §4's test vectors, and its
refusals (as clients/src/card/tests.rs). Run: python -m unittest discover -s tests"""

import os
import tempfile
import unittest

from brandkms_client import card
from brandkms_client.card import Card, CardKey, Status

KM = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
CID = bytes.fromhex("0123456789012345")
KC = bytes.fromhex("F84314C6B85BD3B0C74794922C3809B0")
RA = bytes.fromhex("A1A2A3A4A5A6A7A8")
RB = bytes.fromhex("B1B2B3B4B5B6B7B8")
DEBIT = bytes.fromhex("012000000000000007D04A505900112233445566778899AABBCCDDEEFF")
LOAD = bytes.fromhex("011000000000000013884A5059000102030405060708090A0B0C0D0E0F")


def parity_masked(key: bytes) -> bytes:
    """DES parity bits carry no meaning (docs/protocol.md)."""
    return bytes(b & 0xFE for b in key)


class Vectors(unittest.TestCase):
    def test_derivations(self) -> None:
        self.assertEqual(card.kcv(KM).hex().upper(), "08D7B4")
        kc = card.diversify(KM, CID)
        self.assertEqual(parity_masked(kc), parity_masked(KC))
        self.assertEqual(card.kcv(kc).hex().upper(), "1DA5E1")
        km3 = bytes.fromhex("0123456789ABCDEFFEDCBA987654321089ABCDEF01234567")
        self.assertEqual(
            parity_masked(card.diversify(km3, CID)),
            parity_masked(bytes.fromhex("AB6997EE25A66A9B5F01704CB7ED5070")),
        )
        km1 = bytes.fromhex("133457799BBCDFF1")
        self.assertEqual(
            parity_masked(card.diversify(km1, CID)),
            parity_masked(bytes.fromhex("0FB64856C4388E1D0B493F4E22BD2038")),
        )
        ks = card.session_key(KC, RA, RB)
        self.assertEqual(ks.hex().upper(), "ACF9FBDCDCCD1B45D1261A3207D006CA")
        self.assertEqual(card.kcv(ks).hex().upper(), "F2FCA7")
        self.assertEqual(card.mac(ks, 1, 0, DEBIT).hex().upper(), "C94D9DCE7DE29AF2")
        self.assertEqual(card.mac(ks, 1, 1, LOAD).hex().upper(), "CA2BFDE2887398FD")
        self.assertEqual(
            card.command_payload(card.OP_DEBIT, 2000, "JPY", bytes.fromhex("00112233445566778899AABBCCDDEEFF")),
            DEBIT,
        )

    def test_the_card_runs_the_vector_session(self) -> None:
        c = Card.personalise_from_master(KM, CID, 0x0A01, balance=5000)
        self.assertEqual(c.key_version(0x0A01), 1)
        self.assertIsNone(c.key_version(0x0A02))
        c1 = c.answer_challenge(0x0A01, 1, RB, ra=RA)
        self.assertEqual(c1.hex().upper(), "97104CE0EA4DA1C92747D09AF302C9E3")
        c.accept_service(bytes.fromhex("DD265EA85AA3A3C8A2CF215FEAEDCDCA"))
        self.assertTrue(c.in_session)
        receipt, mac = c.process(0, DEBIT, bytes.fromhex("C94D9DCE7DE29AF2"))
        self.assertEqual(receipt.hex().upper(), "01000000000000000BB84A505900112233445566778899AABBCCDDEEFF")
        self.assertEqual(mac.hex().upper(), "266778764E7FC8F3")
        receipt, _ = c.process(1, LOAD, bytes.fromhex("CA2BFDE2887398FD"))
        self.assertEqual(receipt[1], Status.OK)
        self.assertEqual(c.balance, 8000)


class Refusals(unittest.TestCase):
    def test_forgeries_replays_and_impostors(self) -> None:
        c = Card(CID, [CardKey(1, 1, KC)], 1000, 2000, "JPY")
        rb = bytes([7] * 8)
        c.answer_challenge(1, 1, rb)
        with self.assertRaises(card.ServiceNotAuthenticated):
            c.accept_service(bytes(16))
        self.assertFalse(c.in_session)
        ra = bytes([9] * 8)
        c.answer_challenge(1, 1, rb, ra=ra)
        c.accept_service(card.cbc_encrypt(KC, rb + ra))
        ks = card.session_key(KC, ra, rb)
        p = card.command_payload(card.OP_DEBIT, 300, "JPY", bytes(16))
        r, _ = c.process(0, p, bytes(8))
        self.assertEqual((r[1], c.balance), (Status.BAD_MAC, 1000))
        m = card.mac(ks, 1, 0, p)
        r, rm = c.process(0, p, m)
        self.assertEqual((r[1], c.balance), (Status.OK, 700))
        self.assertEqual(card.mac(ks, 2, 0, r), rm)
        r, _ = c.process(0, p, m)
        self.assertEqual((r[1], c.balance), (Status.BAD_COUNTER, 700))
        p = card.command_payload(card.OP_DEBIT, 5000, "JPY", bytes(16))
        r, _ = c.process(1, p, card.mac(ks, 1, 1, p))
        self.assertEqual((r[1], c.balance), (Status.INSUFFICIENT_FUNDS, 700))
        p = card.command_payload(card.OP_LOAD, 1500, "JPY", bytes(16))
        r, _ = c.process(2, p, card.mac(ks, 1, 2, p))
        self.assertEqual((r[1], c.balance), (Status.LIMIT_EXCEEDED, 700))
        p = card.command_payload(card.OP_DEBIT, 1, "EUR", bytes(16))
        r, _ = c.process(3, p, card.mac(ks, 1, 3, p))
        self.assertEqual((r[1], c.balance), (Status.UNSUPPORTED, 700))
        with self.assertRaises(card.CardError):
            c.answer_challenge(2, 1, rb)

    def test_the_card_file_round_trips_without_secrets_in_repr(self) -> None:
        c = Card.personalise_from_master(KM, CID, 0x0A01, balance=5000)
        self.assertNotIn(KC.hex().upper()[:8], repr(c))
        self.assertNotIn(KC.hex()[:8], repr(c))
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "card.json")
            c.save(path)
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
            again = Card.load(path)
        self.assertEqual((again.card_id, again.balance, again.currency), (CID, 5000, "JPY"))
        self.assertEqual(parity_masked(again.keys[0].key), parity_masked(KC))


if __name__ == "__main__":
    unittest.main()
