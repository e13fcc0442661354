"""Sealed blobs (proto/src/blob.rs's layout) and profile resolution (as kmsctl's).
Run: python -m unittest discover -s tests"""

import os
import tempfile
import unittest
from pathlib import Path

from brandkms_client.clearing import BlobError, SealedBlob
from brandkms_client.errors import ConfigError
from brandkms_client.profile import Profile


class Blobs(unittest.TestCase):
    def test_round_trip_and_refusals(self) -> None:
        b = SealedBlob("settle", 2, 1, bytes([7] * 256))
        data = b.encode()
        self.assertEqual(data[:11], b"BKS1\x06settle")
        self.assertEqual(SealedBlob.decode(data), b)
        for bad in (data[:-1], data + b"\x00", b"BKS2", b"BKS1\x00", data[:5] + b"S" + data[6:]):
            with self.assertRaises(BlobError):
                SealedBlob.decode(bad)


class Profiles(unittest.TestCase):
    def test_arguments_then_environment_then_profile(self) -> None:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "shop.toml"
            p.write_text('endpoint = "https://127.0.0.1:7543"\nca = "ca.pem"\ncert = "/abs/shop.pem"\nkey = "shop-key.pem"\n')
            got = Profile.load(p, env={})
            self.assertEqual(got.ca, Path(d) / "ca.pem")
            self.assertEqual(got.cert, Path("/abs/shop.pem"))
            self.assertEqual((got.target, got.tls_server_name), ("127.0.0.1:7543", "localhost"))
            got = Profile.load(env={"KMSCTL_PROFILE": str(p), "KMSCTL_KEY": "/env/key.pem"}, cert="/arg/cert.pem")
            self.assertEqual((got.key, got.cert), (Path("/env/key.pem"), Path("/arg/cert.pem")))
            p.write_text('endpoint = "https://kms.example:443"\nca = "a"\ncert = "b"\nkey = "c"\nserver_name = "kms"\nport = 1\n')
            with self.assertRaises(ConfigError):
                Profile.load(p, env={})
        old = os.environ.get("HOME")
        os.environ["HOME"] = "/nonexistent"
        try:
            with self.assertRaises(ConfigError):
                Profile.load(env={"KMSCTL_CA": "/ca.pem"})
        finally:
            if old is not None:
                os.environ["HOME"] = old
        got = Profile.load(endpoint="https://kms.example", ca="a", cert="b", key="c", env={})
        self.assertEqual((got.target, got.tls_server_name), ("kms.example:443", "kms.example"))


if __name__ == "__main__":
    unittest.main()
