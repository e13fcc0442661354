"""The brand's old HSM, played by an independent implementation (Python
`cryptography`): wraps a key it holds under brandkms's import key with RSA-OAEP
(SHA-1, MGF1-SHA-1, no label), as GetImportParameters says, after checking the
import key's fingerprint.

    python3 old_hsm.py SPKI_DER_HEX FINGERPRINT_HEX KEY_HEX

Prints the wrapped key (hex) and the key's check value (hex, E_K(0^8)[0..3]).
"""

import hashlib
import sys

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers import Cipher, modes

try:
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # older cryptography
    from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES


def main():
    spki = bytes.fromhex(sys.argv[1])
    if hashlib.sha256(spki).hexdigest() != sys.argv[2].lower():
        sys.exit("the import key's fingerprint is not the one checked out of band")
    key = bytes.fromhex(sys.argv[3])
    public = serialization.load_der_public_key(spki)
    wrapped = public.encrypt(
        key,
        padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None),
    )
    encryptor = Cipher(TripleDES(key), modes.ECB()).encryptor()
    kcv = (encryptor.update(bytes(8)) + encryptor.finalize())[:3]
    print(wrapped.hex(), kcv.hex().upper())


if __name__ == "__main__":
    main()
