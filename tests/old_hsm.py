"""The brand's old HSM, played by an independent implementation (Python
`cryptography`).

Wrap one key under brandkms's import key with RSA-OAEP (SHA-1, MGF1-SHA-1, no
label), as GetImportParameters says, after checking the import key's
fingerprint:

    python3 old_hsm.py SPKI_DER_HEX FINGERPRINT_HEX KEY_HEX

prints the wrapped key (hex) and the key's check value (hex). A 32-byte key is
an AES-256 key-encryption key (KCV: AES-ECB of a zero block, first 3 bytes);
the others are DES/TDES keys (KCV: E_K(0^8), first 3 bytes).

Wrap many card-access keys under an AES-256 import KEK with AES key wrap with
padding (RFC 5649), for `kmsctl key import-batch`:

    python3 old_hsm.py batch KEK_HEX KEK_ALIAS < keys.txt > batch.toml

where each line of keys.txt is `ALIAS KEY_HEX [SERVICE_CODE [PURPOSE]]`
(service code decimal or 0x hex, default 0x0A01; purpose default purchase).

Personalise a (simulated) card from a master, as the issuer did long ago
outside brandkms (docs/protocol.md: K_C = E_KM(CID) || E_KM(~CID)), as a card file
the participant commands read:

    python3 old_hsm.py card KM_HEX CARD_ID_HEX SERVICE_CODE BALANCE OUT.json
"""

import hashlib
import sys
import warnings

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

# Two-key TDES is what the cards in the field use.
warnings.filterwarnings("ignore", message=".*TripleDES.*")

try:
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # older cryptography
    from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES


def kcv(key):
    if len(key) == 32:
        cipher, block = algorithms.AES(key), bytes(16)
    else:
        cipher, block = TripleDES(key), bytes(8)
    encryptor = Cipher(cipher, modes.ECB()).encryptor()
    return (encryptor.update(block) + encryptor.finalize())[:3].hex().upper()


def wrap_under_import_key(spki_hex, fingerprint_hex, key_hex):
    spki = bytes.fromhex(spki_hex)
    if hashlib.sha256(spki).hexdigest() != fingerprint_hex.lower():
        sys.exit("the import key's fingerprint is not the one checked out of band")
    key = bytes.fromhex(key_hex)
    public = serialization.load_der_public_key(spki)
    wrapped = public.encrypt(
        key,
        padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None),
    )
    print(wrapped.hex(), kcv(key))


def batch(kek_hex, kek_alias):
    kek = bytes.fromhex(kek_hex)
    if len(kek) != 32:
        sys.exit("the import KEK is an AES-256 key (32 bytes)")
    print(f'kek = "{kek_alias}"')
    for line in sys.stdin:
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        alias, key_hex = fields[0], fields[1]
        service_code = int(fields[2], 0) if len(fields) > 2 else 0x0A01
        purpose = fields[3] if len(fields) > 3 else "purchase"
        key = bytes.fromhex(key_hex)
        algorithm = {8: "des", 16: "tdes2", 24: "tdes3"}[len(key)]
        print()
        print("[[key]]")
        print(f'alias = "{alias}"')
        print(f'algorithm = "{algorithm}"')
        print(f"service_code = {service_code}")
        print(f'purpose = "{purpose}"')
        print(f'wrapped = "{aes_key_wrap_with_padding(kek, key).hex()}"')
        print(f'kcv = "{kcv(key)}"')


def ecb(key, block):
    encryptor = Cipher(TripleDES(key), modes.ECB()).encryptor()
    return encryptor.update(block) + encryptor.finalize()


def card(km_hex, cid_hex, service_code, balance, out):
    import json
    import os

    km, cid = bytes.fromhex(km_hex), bytes.fromhex(cid_hex)
    kc = ecb(km, cid) + ecb(km, bytes(b ^ 0xFF for b in cid))
    document = {
        "card_id": cid.hex().upper(),
        "keys": [{"service_code": int(service_code, 0), "version": 1, "key": kc.hex().upper()}],
        "balance": int(balance),
        "max_balance": 100000,
        "currency": "JPY",
    }
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(document, f, indent=2)
    print(f"card {document['card_id']} personalised from the master with KCV {kcv(km)}: {out}")


def main():
    if sys.argv[1] == "batch":
        batch(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "card":
        card(*sys.argv[2:7])
    else:
        wrap_under_import_key(sys.argv[1], sys.argv[2], sys.argv[3])


if __name__ == "__main__":
    main()
