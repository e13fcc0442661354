//! Card payloads both ways: the service's receipt parser (what a card, or
//! whoever plays one, sends back) and the card simulator's command processing,
//! in a session set up from docs/protocol.md's vectors, with a valid MAC on half the
//! inputs so that the payload itself is reached. Nothing panics; a receipt that
//! parses is rebuilt byte for byte; a rejected command leaves the balance alone.
#![no_main]

use brandkms::ops::card_protocol::{PAYLOAD_LEN, parse_receipt};
use brandkms_clients::card::{self, Card, CardKeyEntry};
use libfuzzer_sys::fuzz_target;

const KC: &str = "F84314C6B85BD3B0C74794922C3809B0";

fn h<const N: usize>(s: &str) -> [u8; N] {
    hex::decode(s).unwrap().try_into().unwrap()
}

fuzz_target!(|data: &[u8]| {
    if let Some(r) = parse_receipt(data) {
        let rebuilt = card::receipt_payload(r.status, r.balance, &r.currency, &r.txn_id);
        assert_eq!(&rebuilt[..], data);
    }

    // [flags][counter: 4][payload ...][mac: 8 unless flags & 1]
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Some((counter, rest)) = rest.split_first_chunk::<4>() else {
        return;
    };
    let counter = u32::from_be_bytes(*counter);
    let cid = h::<8>("0123456789012345");
    let mut c = Card::personalise(
        cid,
        vec![CardKeyEntry {
            service_code: 0x0A01,
            version: 1,
            key: KC.into(),
        }],
        5000,
        100_000,
        "JPY",
    );
    let ra = h::<8>("A1A2A3A4A5A6A7A8");
    let rb = h::<8>("B1B2B3B4B5B6B7B8");
    c.answer_challenge_with(0x0A01, 1, &rb, ra).unwrap();
    c.accept_service(&h::<16>("DD265EA85AA3A3C8A2CF215FEAEDCDCA"))
        .unwrap();
    let ks = card::session_key(&h::<16>(KC), &ra, &rb).unwrap();
    let (payload, mac) = if flags & 1 == 0 {
        (rest, card::mac(&ks, 0x01, counter, rest).unwrap().to_vec())
    } else {
        let cut = rest.len().saturating_sub(8);
        (&rest[..cut], rest[cut..].to_vec())
    };
    let before = c.balance;
    match c.process(counter, payload, &mac) {
        Ok((receipt, _)) => {
            assert_eq!(payload.len(), PAYLOAD_LEN);
            let r = parse_receipt(&receipt).expect("the card's receipt parses");
            if r.status != 0 {
                assert_eq!(c.balance, before, "a refused command changes nothing");
            }
        }
        Err(_) => assert_eq!(c.balance, before),
    }
});
