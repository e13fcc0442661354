#!/usr/bin/env python3
"""A cybershop's online purchase with a software card, in Python: brandkms
authenticates the card by proxy (docs/protocol.md §2), seals the DEBIT, the card
applies it, and brandkms verifies the card's receipt. What `cybershop purchase`
does (clients/src/terminal.rs), with the Python card (brandkms_client.card)
on the Rust simulator's card file.

    python examples/purchase.py --profile shop.toml --card card.json --alias key-k --amount 2000

Exits 1 when the purchase fails: brandkms refused (the refusal's rule code is
printed), the card was not authenticated, the receipt is not genuine, or the card
refused the debit (insufficient funds). The card file keeps its new state
whatever happened.
"""

import argparse
import sys
from pathlib import Path

try:
    import brandkms_client
except ImportError:  # run from the source tree without build.sh's .pth
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import brandkms_client

from brandkms_client import BrandKmsError, Card, CardError, Client, cybershop
from brandkms_client.profile import add_connection_arguments, profile_from_arguments


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_connection_arguments(parser)
    parser.add_argument("--card", required=True, type=Path, help="the card file (the software card's state)")
    parser.add_argument("--alias", required=True, help="the card-access key the transaction uses")
    parser.add_argument("--amount", required=True, type=int, help="minor units")
    parser.add_argument("--currency", default="JPY", help="ISO 4217 currency (default JPY)")
    args = parser.parse_args()

    try:
        profile = profile_from_arguments(args)
        card = Card.load(args.card)
        with Client.connect(profile) as client:
            try:
                t = cybershop.purchase(client, card, args.alias, args.amount, args.currency)
            finally:
                # The card's state (balance, counters) is kept whatever happened.
                card.save(args.card)
    except (BrandKmsError, CardError) as e:
        print(f"purchase: error: {e}", file=sys.stderr)
        return 1

    print(
        f"session {t.session_id}: {cybershop.op_text(brandkms_client.pb.CARD_OP_DEBIT)} "
        f"{args.amount} {args.currency} (counter {t.sealed.counter}, txn {t.sealed.txn_id.hex().upper()})"
    )
    print(
        f"receipt genuine: status {cybershop.status_text(t.receipt.status)}, "
        f"card balance {t.receipt.balance} {t.receipt.currency}"
    )
    if not t.ok:
        print(f"purchase: error: the card refused: {cybershop.status_text(t.receipt.status)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
