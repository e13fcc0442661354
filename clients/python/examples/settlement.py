#!/usr/bin/env python3
"""The clearing house decrypts a settlement file, in Python: one sealed blob per
line (base64, as `terminal seal` writes them), streamed through DecryptStream;
a line that fails does not stop the others. What `clearing decrypt` does
(clients/src/settlement_cli.rs).

    python examples/settlement.py --profile clearing.toml day.txt --out day.results

The plaintexts (account numbers) go to the --out file only (mode 0600), one
`LINE<TAB>PLAINTEXT` per decrypted line, as `clearing decrypt` writes them;
standard output gets each line's outcome and a summary, never a plaintext.
Exits 1 when the file cannot be read or the stream fails; lines that fail are
reported and do not change the exit status (as `clearing decrypt`), unless
--strict is given.
"""

import argparse
import os
import sys
from pathlib import Path

try:
    import brandkms_client  # noqa: F401
except ImportError:  # run from the source tree without build.sh's .pth
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from brandkms_client import BrandKmsError, Client, clearing
from brandkms_client.profile import add_connection_arguments, profile_from_arguments


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_connection_arguments(parser)
    parser.add_argument("file", type=Path, help="the settlement file (one sealed blob per line, base64)")
    parser.add_argument("--out", required=True, type=Path, help="where the results go (LINE<TAB>PLAINTEXT), mode 0600")
    parser.add_argument("--strict", action="store_true", help="exit 2 when any line failed")
    args = parser.parse_args()

    decrypted = failed = 0
    try:
        profile = profile_from_arguments(args)
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out, Client.connect(profile) as client:
            for r in clearing.decrypt_file(client, args.file):
                if r.ok:
                    assert r.plaintext is not None
                    try:
                        text = r.plaintext.decode("utf-8")
                    except UnicodeDecodeError:
                        text = r.plaintext.hex().upper()
                    out.write(f"{r.line}\t{text}\n")
                    decrypted += 1
                    print(f"line {r.line}: decrypted ({len(r.plaintext)} bytes)")
                else:
                    failed += 1
                    print(f"line {r.line}: failed: {r.describe_error()}")
    except (BrandKmsError, OSError) as e:
        print(f"settlement: error: {e}", file=sys.stderr)
        return 1

    print(f"decrypted {decrypted} of {decrypted + failed} lines; {failed} failed; results in {args.out}")
    return 2 if args.strict and failed else 0


if __name__ == "__main__":
    sys.exit(main())
