"""A foreign PKCS#11 client holding the service's user PIN (PyKCS11, Debian's
python3-pykcs11), trying to take brand keys out of the token: for every secret
key brandkms keeps there, it wraps the key under an AES key it makes
(CKM_AES_KEY_WRAP_PAD) and under an RSA public key it imports (CKM_RSA_PKCS_OAEP).

    python3 foreign_pkcs11.py MODULE TOKEN_LABEL PIN

Prints one JSON object: label -> {"aes": outcome, "rsa": outcome}, where an
outcome is "wrapped" or the PKCS#11 error's name. Uses SOFTHSM2_CONF (and
OPENSSL_CONF) from the environment, like the service.
"""

import json
import sys

import PyKCS11
from PyKCS11.LowLevel import (
    CKA_CLASS,
    CKA_ENCRYPT,
    CKA_KEY_TYPE,
    CKA_LABEL,
    CKA_MODULUS,
    CKA_PUBLIC_EXPONENT,
    CKA_TOKEN,
    CKA_VALUE_LEN,
    CKA_WRAP,
    CKK_AES,
    CKK_RSA,
    CKM_AES_KEY_GEN,
    CKM_AES_KEY_WRAP_PAD,
    CKO_PUBLIC_KEY,
    CKO_SECRET_KEY,
)

# An RSA-2048 public key of the attacker's own (any modulus will do: nothing
# is ever unwrapped, the question is whether the token wraps at all).
MODULUS = bytes.fromhex(
    "c5" + "a7" * 254 + "61"
)


def outcome(wrap):
    try:
        wrap()
        return "wrapped"
    except PyKCS11.PyKCS11Error as e:
        return PyKCS11.CKR[e.value] if e.value in PyKCS11.CKR else str(e.value)


def main():
    module, label, pin = sys.argv[1:4]
    lib = PyKCS11.PyKCS11Lib()
    lib.load(module)
    slot = next(
        s for s in lib.getSlotList(tokenPresent=True)
        if lib.getTokenInfo(s).label.strip() == label
    )
    session = lib.openSession(slot, PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
    session.login(pin)
    own_aes = session.generateKey(
        [
            (CKA_CLASS, CKO_SECRET_KEY),
            (CKA_KEY_TYPE, CKK_AES),
            (CKA_VALUE_LEN, 32),
            (CKA_TOKEN, False),
            (CKA_WRAP, True),
            (CKA_ENCRYPT, True),
        ],
        PyKCS11.Mechanism(CKM_AES_KEY_GEN),
    )
    own_rsa = session.createObject(
        [
            (CKA_CLASS, CKO_PUBLIC_KEY),
            (CKA_KEY_TYPE, CKK_RSA),
            (CKA_TOKEN, False),
            (CKA_MODULUS, MODULUS),
            (CKA_PUBLIC_EXPONENT, bytes([1, 0, 1])),
            (CKA_WRAP, True),
        ]
    )
    oaep = PyKCS11.RSAOAEPMechanism(PyKCS11.CKM_SHA_1, PyKCS11.CKG_MGF1_SHA1)
    result = {}
    for key in session.findObjects([(CKA_CLASS, CKO_SECRET_KEY), (CKA_TOKEN, True)]):
        value = session.getAttributeValue(key, [CKA_LABEL])[0]
        name = value if isinstance(value, str) else bytes(value).decode()
        if not name.startswith("brandkms/"):
            continue
        result[name] = {
            "aes": outcome(
                lambda: session.wrapKey(own_aes, key, PyKCS11.Mechanism(CKM_AES_KEY_WRAP_PAD))
            ),
            "rsa": outcome(lambda: session.wrapKey(own_rsa, key, oaep)),
        }
    session.logout()
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
