//! Settlement keys end to end: RSA key pairs generated in the token, public keys
//! for anyone, ciphertexts made by an independent implementation (RustCrypto
//! `rsa`, with the parameters GetPublicKey reports) decrypted in the token for the
//! clearing house only, uniform decryption failures, rotation, signatures.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use brandkms_clients::Client;
use brandkms_proto::v1 as pb;
use brandkms_tests::{TestServer, on_each_database, refusal_of, register, status_of, tie_up};
use rsa::pkcs8::DecodePublicKey;
use rsa::{Oaep, RsaPublicKey};
use tonic::Code;

async fn settlement_key(officer: &Client, alias: &str, owner: &str) {
    let k = officer
        .admin()
        .create_key(pb::CreateKeyRequest {
            alias: alias.into(),
            key_class: pb::KeyClass::Settlement as i32,
            algorithm: pb::KeyAlgorithm::Rsa2048 as i32,
            owner_entity: owner.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(k.key_class, pb::KeyClass::Settlement as i32);
    assert_eq!(k.versions[0].kcv.len(), 32, "SPKI SHA-256 fingerprint");
}

async fn public_key(c: &Client, alias: &str, version: Option<u32>) -> pb::PublicKey {
    c.settlement()
        .get_public_key(pb::GetPublicKeyRequest {
            alias: alias.into(),
            version: version.unwrap_or(0),
        })
        .await
        .unwrap()
}

/// Encrypts as a terminal would, with the parameters the service reports.
fn seal(p: &pb::PublicKey, plaintext: &[u8]) -> Vec<u8> {
    let key = RsaPublicKey::from_public_key_der(&p.spki_der).unwrap();
    let padding = if p.oaep_hash == pb::OaepHash::Sha256 as i32 {
        Oaep::new::<sha2::Sha256>()
    } else {
        Oaep::new::<sha1::Sha1>()
    };
    key.encrypt(&mut rand_core(), padding, plaintext).unwrap()
}

fn rand_core() -> rsa::rand_core::OsRng {
    rsa::rand_core::OsRng
}

fn decrypt(alias: &str, version: u32, ciphertext: Vec<u8>) -> pb::DecryptRequest {
    pb::DecryptRequest {
        alias: alias.into(),
        version,
        ciphertext,
    }
}

#[tokio::test]
async fn clearing_house_decrypts_what_terminals_sealed() {
    on_each_database(|s: TestServer| async move {
        let officer = s.client("officer-1").await;
        for (id, kind) in [
            ("clearing-house", pb::EntityKind::ClearingHouse),
            ("store-s", pb::EntityKind::MerchantTerminal),
            ("cybershop-k", pb::EntityKind::Cybershop),
        ] {
            register(&officer, id, kind).await;
        }
        settlement_key(&officer, "settle", "").await;
        settlement_key(&officer, "settle-other", "").await;
        settlement_key(&officer, "shop-k-id", "cybershop-k").await;
        // The store has a tie-up on the settlement key too (it verifies results),
        // so that what refuses it decryption is rule 6, not the missing tie-up.
        for (entity, alias) in [
            ("clearing-house", "settle"),
            ("clearing-house", "settle-other"),
            ("clearing-house", "shop-k-id"),
            ("store-s", "settle"),
        ] {
            tie_up(&officer, entity, alias, pb::TieUpMode::Hold, None).await;
        }
        let clearing = s.client("clearing-house").await;
        let store = s.client("store-s").await;

        // Anyone gets the public key; SoftHSM2 decrypts OAEP with SHA-1 only.
        let p = public_key(&store, "settle", None).await;
        assert_eq!((p.version, p.bits), (1, 2048));
        assert!(p.pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{}", p.pem);
        assert_eq!(p.oaep_hash, pb::OaepHash::Sha1 as i32, "{}", s.backend);
        let pan = b"4111111111111111";
        let ct = seal(&p, pan);
        let plain = clearing
            .settlement()
            .decrypt(decrypt("settle", 1, ct.clone()))
            .await
            .unwrap()
            .plaintext;
        assert_eq!(plain, pan);

        // Someone who is not a clearing house is denied naming rule 6.
        let (c, m) = status_of(
            store
                .settlement()
                .decrypt(decrypt("settle", 1, ct.clone()))
                .await,
        );
        assert_eq!(c, Code::PermissionDenied);
        assert!(m.starts_with("rule 6 (not_clearing_house)"), "{m}");

        // Bad ciphertexts: one error, one status, no plaintext.
        let other = seal(&public_key(&store, "settle-other", None).await, pan);
        let random: Vec<u8> = (0..256).map(|_| rand::random::<u8>()).collect();
        let mut messages = Vec::new();
        for (what, bad) in [
            ("wrong length", vec![1u8; 10]),
            ("all zeros", vec![0u8; 256]),
            ("random bytes of modulus size", random),
            ("another key's ciphertext", other),
            ("truncated", ct[..255].to_vec()),
            ("empty", Vec::new()),
        ] {
            let (c, m) = status_of(
                clearing
                    .settlement()
                    .decrypt(decrypt("settle", 1, bad))
                    .await,
            );
            assert_eq!(c, Code::InvalidArgument, "{what}: {m}");
            messages.push(m);
        }
        messages.dedup();
        assert_eq!(messages, ["decryption failed"]);
        // The same through DecryptStream, with blobs: one answer for all of them.
        let blob = |alias: &str, version: u32, ciphertext: Vec<u8>| {
            brandkms_proto::blob::SealedBlob {
                alias: alias.into(),
                version,
                oaep_hash: 1,
                ciphertext,
            }
            .encode()
            .unwrap()
        };
        let good = brandkms_clients::sdk::seal(&p, pan).unwrap();
        let bad_blobs = vec![
            blob("settle", 1, vec![1u8; 10]),
            blob("settle", 1, vec![0u8; 256]),
            blob(
                "settle",
                1,
                (0..256).map(|_| rand::random::<u8>()).collect(),
            ),
            brandkms_clients::sdk::seal(&public_key(&store, "settle-other", None).await, pan)
                .map(|b| {
                    let mut parsed = brandkms_proto::blob::SealedBlob::decode(&b).unwrap();
                    parsed.alias = "settle".into();
                    parsed.encode().unwrap()
                })
                .unwrap(),
            good[..good.len() - 1].to_vec(),
        ];
        let items = tokio_stream::iter(bad_blobs.into_iter().enumerate().map(|(i, blob)| {
            pb::DecryptItem {
                index: i as u64,
                blob,
            }
        }));
        let mut results = clearing.settlement().decrypt_stream(items).await.unwrap();
        let mut n = 0;
        while let Some(r) = tokio_stream::StreamExt::next(&mut results).await {
            match r.unwrap().result.unwrap() {
                pb::decrypt_result::Result::Error(e) => {
                    assert_eq!((e.code, e.message.as_str()), (3, "decryption failed"));
                    assert_eq!(e.reason, "");
                }
                pb::decrypt_result::Result::Plaintext(_) => panic!("a bad blob decrypted"),
            }
            n += 1;
        }
        assert_eq!(n, 5);

        // An entity-owned key decrypts for its owner only.
        let owned = public_key(&store, "shop-k-id", None).await;
        assert_eq!(owned.owner_entity, "cybershop-k");
        let ct_owned = seal(&owned, b"purchase 0042");
        let (c, m) = status_of(
            clearing
                .settlement()
                .decrypt(decrypt("shop-k-id", 1, ct_owned.clone()))
                .await,
        );
        assert_eq!(c, Code::PermissionDenied);
        assert!(m.starts_with("rule 6 (not_key_owner)"), "{m}");
        let shop = s.client("cybershop-k").await;
        let plain = shop
            .settlement()
            .decrypt(decrypt("shop-k-id", 1, ct_owned))
            .await
            .unwrap()
            .plaintext;
        assert_eq!(plain, b"purchase 0042");

        // In a stream, a refusal and a decryption failure are told apart by code
        // (and a refusal carries the rule's code), not by their text.
        let refused_blob = brandkms_clients::sdk::seal(&owned, b"purchase 0043").unwrap();
        let failing_blob = blob("settle", 1, vec![0u8; 256]);
        let items = tokio_stream::iter([refused_blob, failing_blob].into_iter().enumerate().map(
            |(i, blob)| pb::DecryptItem {
                index: i as u64,
                blob,
            },
        ));
        let mut results = clearing.settlement().decrypt_stream(items).await.unwrap();
        let mut errors = Vec::new();
        while let Some(r) = tokio_stream::StreamExt::next(&mut results).await {
            match r.unwrap().result.unwrap() {
                pb::decrypt_result::Result::Error(e) => errors.push((e.code, e.reason)),
                pb::decrypt_result::Result::Plaintext(_) => panic!("decrypted for a non-owner"),
            }
        }
        assert_eq!(
            errors,
            [
                (Code::PermissionDenied as i32, "not_key_owner".to_string()),
                (Code::InvalidArgument as i32, String::new()),
            ]
        );

        // Signatures: the clearing house signs, a store verifies; a store cannot sign.
        let result = b"settlement 2026-11-21: 3 items, 9000 JPY".to_vec();
        let signed = clearing
            .settlement()
            .sign(pb::SignRequest {
                alias: "settle".into(),
                data: result.clone(),
            })
            .await
            .unwrap();
        let verify = |data: Vec<u8>| pb::VerifyRequest {
            alias: "settle".into(),
            version: signed.version,
            data,
            signature: signed.signature.clone(),
        };
        assert!(
            store
                .settlement()
                .verify(verify(result.clone()))
                .await
                .unwrap()
                .valid
        );
        let mut forged = result.clone();
        forged[11] ^= 1;
        assert!(
            !store
                .settlement()
                .verify(verify(forged))
                .await
                .unwrap()
                .valid
        );
        let (c, _) = status_of(
            store
                .settlement()
                .sign(pb::SignRequest {
                    alias: "settle".into(),
                    data: result,
                })
                .await,
        );
        assert_eq!(c, Code::PermissionDenied);

        // MACs on settlement results: the clearing house generates, a store
        // verifies; a store cannot generate one.
        officer
            .admin()
            .create_key(pb::CreateKeyRequest {
                alias: "results-mac".into(),
                key_class: pb::KeyClass::Authenticator as i32,
                ..Default::default()
            })
            .await
            .unwrap();
        for entity in ["clearing-house", "store-s"] {
            tie_up(&officer, entity, "results-mac", pb::TieUpMode::Hold, None).await;
        }
        let summary = b"store S, 2026-11-21: 12 sales, 48000 JPY".to_vec();
        let mac = clearing
            .settlement()
            .generate_mac(pb::GenerateMacRequest {
                alias: "results-mac".into(),
                data: summary.clone(),
            })
            .await
            .unwrap();
        assert_eq!(mac.mac.len(), 32);
        let check = |data: Vec<u8>| pb::VerifyMacRequest {
            alias: "results-mac".into(),
            version: mac.version,
            data,
            mac: mac.mac.clone(),
        };
        assert!(
            store
                .settlement()
                .verify_mac(check(summary.clone()))
                .await
                .unwrap()
                .valid
        );
        let mut altered = summary.clone();
        altered[30] ^= 1;
        assert!(
            !store
                .settlement()
                .verify_mac(check(altered))
                .await
                .unwrap()
                .valid
        );
        let (c, m) = status_of(
            store
                .settlement()
                .generate_mac(pb::GenerateMacRequest {
                    alias: "results-mac".into(),
                    data: summary.clone(),
                })
                .await,
        );
        assert_eq!(c, Code::PermissionDenied);
        assert!(m.starts_with("rule 6 (mac_by_clearing_house_only)"), "{m}");
        let (c, m) = status_of(
            clearing
                .settlement()
                .generate_mac(pb::GenerateMacRequest {
                    alias: "settle".into(),
                    data: summary.clone(),
                })
                .await,
        );
        assert_eq!(c, Code::PermissionDenied);
        assert!(m.starts_with("rule 6 (not_authenticator_key)"), "{m}");
        // After a rotation, v1 (auth_only) still verifies what it MACed.
        officer
            .admin()
            .rotate_key(pb::RotateKeyRequest {
                alias: "results-mac".into(),
            })
            .await
            .unwrap()
            .done()
            .unwrap();
        assert!(
            store
                .settlement()
                .verify_mac(check(summary))
                .await
                .unwrap()
                .valid
        );

        // Rotation: old blobs decrypt while v1 is decrypt_only, not once retired.
        let rotated = officer
            .admin()
            .rotate_key(pb::RotateKeyRequest {
                alias: "settle".into(),
            })
            .await
            .unwrap()
            .done()
            .unwrap();
        assert_eq!(rotated.versions[0].state, pb::KeyState::DecryptOnly as i32);
        assert_eq!(public_key(&store, "settle", None).await.version, 2);
        let plain = clearing
            .settlement()
            .decrypt(decrypt("settle", 1, ct.clone()))
            .await
            .unwrap()
            .plaintext;
        assert_eq!(plain, pan);
        let (c, m) = status_of(
            clearing
                .settlement()
                .decrypt(decrypt("settle", 2, ct.clone()))
                .await,
        );
        assert_eq!(
            (c, m.as_str()),
            (Code::InvalidArgument, "decryption failed")
        );
        officer
            .admin()
            .set_key_version_state(pb::SetKeyVersionStateRequest {
                alias: "settle".into(),
                version: 1,
                state: pb::KeyState::Retired as i32,
            })
            .await
            .unwrap();
        let (c, m) = status_of(
            clearing
                .settlement()
                .decrypt(decrypt("settle", 1, ct))
                .await,
        );
        // A key-state refusal is a denial naming its rule (issue 12, item 8).
        assert_eq!(c, Code::PermissionDenied, "{m}");
        assert!(m.contains("key_state") && m.contains("retired"), "{m}");
        s
    })
    .await;
}

/// A clearing house with a tie-up on the settlement key `settle`: the officer's
/// and the clearing house's clients, and the key's public half.
async fn clearing_house_with_key(s: &TestServer) -> (Client, Client, pb::PublicKey) {
    let officer = s.client("officer-1").await;
    register(&officer, "clearing-house", pb::EntityKind::ClearingHouse).await;
    settlement_key(&officer, "settle", "").await;
    tie_up(
        &officer,
        "clearing-house",
        "settle",
        pb::TieUpMode::Hold,
        None,
    )
    .await;
    let clearing = s.client("clearing-house").await;
    let p = public_key(&clearing, "settle", None).await;
    (officer, clearing, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decrypt_stream_of_ten_thousand_blobs() {
    let s = TestServer::start(brandkms::testing::sqlite_db()).await;
    let (_officer, clearing, p) = clearing_house_with_key(&s).await;
    // 100 distinct blobs, each sent 100 times: 10,000 decryptions in the token.
    let blobs: Vec<Vec<u8>> = (0..100)
        .map(|i| brandkms_clients::sdk::seal(&p, format!("PAN-{i:04}").as_bytes()).unwrap())
        .collect();
    const N: u64 = 10_000;
    let items = tokio_stream::iter((0..N).map(move |i| pb::DecryptItem {
        index: i,
        blob: if i == 4242 {
            b"BKS1 broken".to_vec()
        } else {
            blobs[(i % 100) as usize].clone()
        },
    }));
    let mut results = clearing.settlement().decrypt_stream(items).await.unwrap();
    let (mut next, mut failed) = (0u64, 0u64);
    while let Some(r) = tokio_stream::StreamExt::next(&mut results).await {
        let r = r.unwrap();
        assert_eq!(r.index, next, "results come back in order");
        match r.result.unwrap() {
            pb::decrypt_result::Result::Plaintext(p) => {
                assert_eq!(p, format!("PAN-{:04}", next % 100).into_bytes());
            }
            pb::decrypt_result::Result::Error(e) => {
                assert_eq!(next, 4242, "{e:?}");
                failed += 1;
            }
        }
        next += 1;
    }
    assert_eq!((next, failed), (N, 1));
    s.stop().await;
}

/// The next result of a stream: (0, "") for a plaintext, else the item error's
/// code and reason.
async fn outcome(results: &mut tonic::Streaming<pb::DecryptResult>) -> (i32, String) {
    match tokio_stream::StreamExt::next(results)
        .await
        .unwrap()
        .unwrap()
        .result
        .unwrap()
    {
        pb::decrypt_result::Result::Plaintext(_) => (0, String::new()),
        pb::decrypt_result::Result::Error(e) => (e.code, e.reason),
    }
}

#[tokio::test]
async fn a_suspension_or_a_terminated_tie_up_cuts_an_open_decrypt_stream_at_the_next_item() {
    on_each_database(|s: TestServer| async move {
        let (officer, clearing, p) = clearing_house_with_key(&s).await;
        let blob = || brandkms_clients::sdk::seal(&p, b"4111111111111111").unwrap();

        // One stream, fed item by item.
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::DecryptItem>(1);
        let mut results = clearing
            .settlement()
            .decrypt_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap();
        let next = |index: u64| {
            let (tx, blob) = (tx.clone(), blob());
            async move {
                tx.send(pb::DecryptItem { index, blob }).await.unwrap();
            }
        };
        next(0).await;
        assert_eq!(outcome(&mut results).await, (0, String::new()));

        officer
            .admin()
            .suspend_entity(pb::EntityRef {
                id: "clearing-house".into(),
            })
            .await
            .unwrap();
        next(1).await;
        assert_eq!(
            outcome(&mut results).await,
            (Code::PermissionDenied as i32, "entity_suspended".into())
        );

        // Resumed, it decrypts again; then its tie-up ends, and the next item stops.
        officer
            .admin()
            .resume_entity(pb::EntityRef {
                id: "clearing-house".into(),
            })
            .await
            .unwrap();
        next(2).await;
        assert_eq!(outcome(&mut results).await, (0, String::new()));
        let tie_up_id = officer
            .admin()
            .list_tie_ups_all(pb::ListTieUpsRequest {
                entity_id: "clearing-house".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .remove(0)
            .id;
        officer
            .admin()
            .terminate_tie_up(pb::TieUpRef { id: tie_up_id })
            .await
            .unwrap();
        next(3).await;
        assert_eq!(
            outcome(&mut results).await,
            (Code::PermissionDenied as i32, "tie_up_terminated".into())
        );
        drop(tx);
        s
    })
    .await;
}

/// Issue 12, item 8: a clearing house asking to decrypt, sign or stream-decrypt
/// under an alias that does not exist gets the same answer as under a settlement
/// key it has no tie-up on (rule 1), so it cannot learn which aliases exist.
#[tokio::test]
async fn settlement_refusals_do_not_tell_which_aliases_exist() {
    on_each_database(|s: TestServer| async move {
        let (officer, clearing, p) = clearing_house_with_key(&s).await;
        settlement_key(&officer, "settle-other", "").await;
        let ciphertext = seal(&p, b"4111111111111111");
        for alias in ["no-such-key", "settle-other"] {
            let refused = refusal_of(
                clearing
                    .settlement()
                    .decrypt(decrypt(alias, 0, ciphertext.clone()))
                    .await,
            );
            assert_eq!(
                refused,
                (Code::PermissionDenied, "no_tie_up".into()),
                "{alias}"
            );
            let refused = refusal_of(
                clearing
                    .settlement()
                    .sign(pb::SignRequest {
                        alias: alias.into(),
                        data: b"settlement file".to_vec(),
                    })
                    .await,
            );
            assert_eq!(
                refused,
                (Code::PermissionDenied, "no_tie_up".into()),
                "{alias}"
            );

            let blob = brandkms_proto::blob::SealedBlob {
                alias: alias.into(),
                version: 1,
                oaep_hash: 2,
                ciphertext: ciphertext.clone(),
            }
            .encode()
            .unwrap();
            let mut results = clearing
                .settlement()
                .decrypt_stream(tokio_stream::iter([pb::DecryptItem { index: 0, blob }]))
                .await
                .unwrap();
            assert_eq!(
                outcome(&mut results).await,
                (Code::PermissionDenied as i32, "no_tie_up".into()),
                "{alias}"
            );
        }
        // The officer is told the truth.
        let (code, _) = status_of(
            officer
                .settlement()
                .decrypt(decrypt("no-such-key", 0, ciphertext))
                .await,
        );
        assert_eq!(code, Code::NotFound);
        s
    })
    .await;
}

/// Issue 13, item 4: past its not-after a settlement key version signs
/// nothing new, while account numbers terminals encrypted under it are still
/// decrypted (the end of its originator-usage period, not of its life).
#[tokio::test]
async fn past_its_not_after_a_settlement_key_still_decrypts_but_no_longer_signs() {
    on_each_database(|s: TestServer| async move {
        let (officer, clearing, p) = clearing_house_with_key(&s).await;
        let ciphertext = seal(&p, b"4111111111111111");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        officer
            .admin()
            .set_key_version_cryptoperiod(pb::SetKeyVersionCryptoperiodRequest {
                alias: "settle".into(),
                version: 0,
                not_before: 0,
                not_after: i64::try_from(now).unwrap() - 1000,
            })
            .await
            .unwrap();
        let plain = clearing
            .settlement()
            .decrypt(decrypt("settle", p.version, ciphertext))
            .await
            .unwrap();
        assert_eq!(plain.plaintext, b"4111111111111111");
        let signed = clearing
            .settlement()
            .sign(pb::SignRequest {
                alias: "settle".into(),
                data: b"settlement 2026-12-07".to_vec(),
            })
            .await;
        assert_eq!(
            refusal_of(signed),
            (Code::PermissionDenied, "key_expired".into())
        );
        // Nor is its public half handed out to encrypt under any more.
        let published = clearing
            .settlement()
            .get_public_key(pb::GetPublicKeyRequest {
                alias: "settle".into(),
                version: 0,
            })
            .await;
        assert_eq!(
            refusal_of(published),
            (Code::PermissionDenied, "key_expired".into())
        );
        s
    })
    .await;
}
