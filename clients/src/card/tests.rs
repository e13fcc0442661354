//! The card simulator against docs/protocol.md's vectors.

use super::*;

fn h<const N: usize>(s: &str) -> [u8; N] {
    hex::decode(s).unwrap().try_into().unwrap()
}

const KC: &str = "F84314C6B85BD3B0C74794922C3809B0";

fn parity_masked(k: &[u8]) -> Vec<u8> {
    k.iter().map(|b| b & 0xFE).collect()
}

#[test]
fn reproduces_every_vector() {
    let km = hex::decode("0123456789ABCDEFFEDCBA9876543210").unwrap();
    assert_eq!(hex::encode_upper(kcv(&km).unwrap()), "08D7B4");
    let cid = h::<8>("0123456789012345");
    let kc = diversify(&km, &cid).unwrap();
    assert_eq!(parity_masked(kc.as_slice()), parity_masked(&h::<16>(KC)));
    assert_eq!(hex::encode_upper(kcv(kc.as_slice()).unwrap()), "1DA5E1");
    let km3 = hex::decode("0123456789ABCDEFFEDCBA987654321089ABCDEF01234567").unwrap();
    assert_eq!(
        parity_masked(diversify(&km3, &cid).unwrap().as_slice()),
        parity_masked(&h::<16>("AB6997EE25A66A9B5F01704CB7ED5070"))
    );
    let km1 = hex::decode("133457799BBCDFF1").unwrap();
    assert_eq!(
        parity_masked(diversify(&km1, &cid).unwrap().as_slice()),
        parity_masked(&h::<16>("0FB64856C4388E1D0B493F4E22BD2038"))
    );

    let mut card = Card::personalise(
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
    let c1 = card.answer_challenge_with(0x0A01, 1, &rb, ra).unwrap();
    assert_eq!(hex::encode_upper(c1), "97104CE0EA4DA1C92747D09AF302C9E3");
    let c2 = h::<16>("DD265EA85AA3A3C8A2CF215FEAEDCDCA");
    card.accept_service(&c2).unwrap();
    let ks = session_key(&h::<16>(KC), &ra, &rb).unwrap();
    assert_eq!(
        hex::encode_upper(ks.as_slice()),
        "ACF9FBDCDCCD1B45D1261A3207D006CA"
    );
    assert_eq!(hex::encode_upper(kcv(ks.as_slice()).unwrap()), "F2FCA7");

    let debit = hex::decode("012000000000000007D04A505900112233445566778899AABBCCDDEEFF").unwrap();
    assert_eq!(
        hex::encode_upper(mac(&ks, 1, 0, &debit).unwrap()),
        "C94D9DCE7DE29AF2"
    );
    let (receipt, receipt_mac) = card
        .process(0, &debit, &h::<8>("C94D9DCE7DE29AF2"))
        .unwrap();
    assert_eq!(
        hex::encode_upper(receipt),
        "01000000000000000BB84A505900112233445566778899AABBCCDDEEFF"
    );
    assert_eq!(hex::encode_upper(receipt_mac), "266778764E7FC8F3");
    let load = hex::decode("011000000000000013884A5059000102030405060708090A0B0C0D0E0F").unwrap();
    assert_eq!(
        hex::encode_upper(mac(&ks, 1, 1, &load).unwrap()),
        "CA2BFDE2887398FD"
    );
    card.process(1, &load, &h::<8>("CA2BFDE2887398FD")).unwrap();
    assert_eq!(card.balance, 8000);
}

#[test]
fn the_card_refuses_forgeries_replays_and_impostors() {
    let kc = h::<16>(KC);
    let mut card = Card::personalise(
        h::<8>("0123456789012345"),
        vec![CardKeyEntry {
            service_code: 1,
            version: 1,
            key: KC.into(),
        }],
        1000,
        2000,
        "JPY",
    );
    let rb = [7u8; 8];
    card.answer_challenge(1, 1, &rb).unwrap();
    // An impostor's C2.
    assert_eq!(
        card.accept_service(&[0u8; 16]),
        Err(CardError::ServiceNotAuthenticated)
    );
    assert!(!card.in_session());
    // A genuine one.
    let c1 = card.answer_challenge_with(1, 1, &rb, [9u8; 8]).unwrap();
    let plain = cbc_decrypt(&kc, &c1).unwrap();
    let mut swapped = [0u8; 16];
    swapped[0..8].copy_from_slice(&plain[8..16]);
    swapped[8..16].copy_from_slice(&plain[0..8]);
    card.accept_service(&cbc_encrypt(&kc, &swapped).unwrap())
        .unwrap();
    let ks = session_key(&kc, &[9u8; 8], &rb).unwrap();
    let debit = |amount: u64| {
        let mut p = [0u8; 29];
        p[0] = 1;
        p[1] = 0x20;
        p[2..10].copy_from_slice(&amount.to_be_bytes());
        p[10..13].copy_from_slice(b"JPY");
        p
    };
    let p = debit(300);
    let (r, _) = card.process(0, &p, &[0u8; 8]).unwrap();
    assert_eq!(r[1], status::BAD_MAC);
    assert_eq!(card.balance, 1000);
    let m = mac(&ks, 1, 0, &p).unwrap();
    let (r, rm) = card.process(0, &p, &m).unwrap();
    assert_eq!((r[1], card.balance), (status::OK, 700));
    assert_eq!(mac(&ks, 2, 0, &r).unwrap(), rm);
    // Replayed counter.
    let (r, _) = card.process(0, &p, &m).unwrap();
    assert_eq!((r[1], card.balance), (status::BAD_COUNTER, 700));
    // Too much.
    let p = debit(5000);
    let (r, _) = card.process(1, &p, &mac(&ks, 1, 1, &p).unwrap()).unwrap();
    assert_eq!((r[1], card.balance), (status::INSUFFICIENT_FUNDS, 700));
}
