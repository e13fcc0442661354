//! The HSM layer on a real SoftHSM2 token (one fresh token per test process).
//! Nothing here is SoftHSM-specific except the token's creation: the suite could
//! run against another vendor's module.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use brandkms::hsm::{EcbDerive, Exportability, HsmError, KeyRole, KeySpec, SecretAlgorithm};
use brandkms::testing;
use cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray};
use cryptoki::error::RvError;
use zeroize::Zeroizing;

fn spec(algorithm: SecretAlgorithm, role: KeyRole, export: Exportability) -> KeySpec {
    KeySpec {
        algorithm,
        role,
        export,
    }
}

fn master(algorithm: SecretAlgorithm) -> KeySpec {
    spec(algorithm, KeyRole::CardMaster, Exportability::Never)
}

/// `E_K(0^8)[0..3]` in software, for 8-, 16- or 24-byte DES keys.
fn des_kcv(key: &[u8]) -> [u8; 3] {
    let mut block = GenericArray::clone_from_slice(&[0u8; 8]);
    match key.len() {
        8 => des::Des::new_from_slice(key)
            .unwrap()
            .encrypt_block(&mut block),
        16 => des::TdesEde2::new_from_slice(key)
            .unwrap()
            .encrypt_block(&mut block),
        24 => des::TdesEde3::new_from_slice(key)
            .unwrap()
            .encrypt_block(&mut block),
        n => panic!("bad DES key length {n}"),
    }
    [block[0], block[1], block[2]]
}

/// The 16 derivation bytes of EMV option A: `CID || CID xor FF..FF`.
fn option_a(cid: &[u8]) -> [u8; 16] {
    let mut data = [0u8; 16];
    data[..8].copy_from_slice(cid);
    for (d, c) in data[8..].iter_mut().zip(cid) {
        *d = c ^ 0xFF;
    }
    data
}

#[tokio::test]
async fn every_key_type_generates_with_a_kcv() {
    let hsm = testing::hsm();
    let specs = [
        master(SecretAlgorithm::Des),
        master(SecretAlgorithm::Tdes2),
        master(SecretAlgorithm::Tdes3),
        spec(
            SecretAlgorithm::Tdes2,
            KeyRole::CardMaster,
            Exportability::WrappedOnly,
        ),
        spec(
            SecretAlgorithm::Aes256,
            KeyRole::Transport,
            Exportability::Never,
        ),
        spec(
            SecretAlgorithm::Aes256,
            KeyRole::SessionSeal,
            Exportability::Never,
        ),
        spec(
            SecretAlgorithm::HmacSha256,
            KeyRole::AuditMac,
            Exportability::Never,
        ),
        spec(
            SecretAlgorithm::HmacSha256,
            KeyRole::Authenticator,
            Exportability::WrappedOnly,
        ),
    ];
    for s in specs {
        let key = hsm
            .run(move |ss| ss.generate(&s, "brandkms-test/gen"))
            .await
            .unwrap_or_else(|e| panic!("{s:?}: {e}"));
        let again = hsm.run(move |ss| ss.kcv(&key.id)).await.unwrap();
        assert_eq!(key.kcv, again, "{s:?}");
        assert!(hsm.run(move |ss| ss.exists(&key.id)).await.unwrap());
    }
}

#[tokio::test]
async fn imported_key_kcvs_match_software() {
    let hsm = testing::hsm();
    let cases: [(SecretAlgorithm, &str); 3] = [
        (SecretAlgorithm::Des, "133457799BBCDFF1"),
        (SecretAlgorithm::Tdes2, "0123456789ABCDEFFEDCBA9876543210"),
        (
            SecretAlgorithm::Tdes3,
            "0123456789ABCDEFFEDCBA987654321089ABCDEF01234567",
        ),
    ];
    for (algorithm, value) in cases {
        let value = hex::decode(value).unwrap();
        let expected = des_kcv(&value);
        let spec = master(algorithm);
        let key = hsm
            .run(move |s| s.import_for_tests(&spec, "brandkms-test/import", &value))
            .await
            .unwrap();
        assert_eq!(key.kcv, expected, "{algorithm:?}");
    }
    // The docs/protocol.md master has KCV 08D7B4.
    let km = hex::decode("0123456789ABCDEFFEDCBA9876543210").unwrap();
    assert_eq!(des_kcv(&km), [0x08, 0xD7, 0xB4]);
    // AES: the first 3 bytes of E_K(0^16).
    let value = [0x42u8; 32];
    let mut block = GenericArray::clone_from_slice(&[0u8; 16]);
    aes::Aes256::new_from_slice(&value)
        .unwrap()
        .encrypt_block(&mut block);
    let spec = spec(
        SecretAlgorithm::Aes256,
        KeyRole::SessionSeal,
        Exportability::Never,
    );
    let key = hsm
        .run(move |s| s.import_for_tests(&spec, "brandkms-test/import", &value))
        .await
        .unwrap();
    assert_eq!(key.kcv, [block[0], block[1], block[2]]);
}

#[tokio::test]
async fn sensitive_values_cannot_be_read() {
    let hsm = testing::hsm();
    for s in [
        master(SecretAlgorithm::Tdes2),
        spec(
            SecretAlgorithm::Tdes2,
            KeyRole::CardMaster,
            Exportability::WrappedOnly,
        ),
        spec(
            SecretAlgorithm::HmacSha256,
            KeyRole::AuditMac,
            Exportability::Never,
        ),
    ] {
        let err = hsm
            .run(move |ss| {
                let key = ss.generate(&s, "brandkms-test/sensitive")?;
                ss.read_value_for_tests(&key.id)
            })
            .await
            .expect_err("the token must refuse CKA_VALUE of a sensitive key");
        assert_eq!(err.rv(), Some(RvError::AttributeSensitive), "{s:?}: {err}");
    }
}

#[tokio::test]
async fn only_exportable_keys_wrap_and_exportable_masters_only_under_a_trusted_key() {
    let hsm = testing::hsm();
    let wrapped = hsm
        .run(|s| {
            let transport = s.generate(
                &spec(
                    SecretAlgorithm::Aes256,
                    KeyRole::Transport,
                    Exportability::Never,
                ),
                "brandkms-test/transport",
            )?;
            let exportable = s.generate(
                &spec(
                    SecretAlgorithm::Tdes2,
                    KeyRole::CardMaster,
                    Exportability::WrappedOnly,
                ),
                "brandkms-test/exportable",
            )?;
            let kept = s.generate(&master(SecretAlgorithm::Tdes2), "brandkms-test/kept")?;
            let participant = s.generate_rsa_for_tests(2048)?;
            Ok((
                s.wrap_aes_kwp(&transport.id, &exportable.id),
                s.wrap_aes_kwp(&transport.id, &kept.id),
                exportable.id,
                kept.id,
                participant,
            ))
        })
        .await
        .unwrap();
    let (untrusted, refused, exportable, kept, (private, modulus, exponent)) =
        (wrapped.0, wrapped.1, wrapped.2, wrapped.3, wrapped.4);
    // An exportable master: never under an untrusted key (even a transport key).
    let err = untrusted.expect_err("an untrusted key must not wrap an exportable master");
    assert_eq!(err.rv(), Some(RvError::KeyNotWrappable), "{err}");
    let err = refused.expect_err("a non-exportable key must not wrap");
    assert_eq!(err.rv(), Some(RvError::KeyUnextractable), "{err}");
    // Under a key the security officer marked trusted, it wraps; a
    // non-exportable key still does not.
    let trusted = hsm
        .as_security_officer(Zeroizing::new(testing::TEST_SO_PIN.to_string()), move |s| {
            s.import_trusted_rsa_public(&modulus, &exponent, [0; 32], "brandkms-test/trusted")
        })
        .await
        .unwrap();
    let (wrapped, refused) = hsm
        .run(move |s| {
            Ok((
                s.wrap_rsa_oaep_under(&trusted.id, &exportable),
                s.wrap_rsa_oaep_under(&trusted.id, &kept),
            ))
        })
        .await
        .unwrap();
    let blob = wrapped.unwrap();
    assert_eq!(blob.len(), 256, "RSA-2048 OAEP");
    let err = refused.expect_err("a non-exportable key must not wrap");
    assert_eq!(err.rv(), Some(RvError::KeyUnextractable), "{err}");
    // The participant unwraps it, and the KCV is the brand's.
    let (_, kcv) = hsm
        .run(move |s| s.unwrap_for_tests(&private, &blob, true, cryptoki::object::KeyType::DES2))
        .await
        .unwrap();
    let brand = hsm.run(move |s| s.kcv(&exportable)).await.unwrap();
    assert_eq!(kcv, brand);
}

#[tokio::test]
async fn a_key_is_found_by_id_and_destroyed() {
    let hsm = testing::hsm();
    let key = hsm
        .run(|s| s.generate(&master(SecretAlgorithm::Tdes2), "brandkms-test/destroy"))
        .await
        .unwrap();
    hsm.run(move |s| s.destroy(&key.id)).await.unwrap();
    let err = hsm.run(move |s| s.kcv(&key.id)).await.unwrap_err();
    assert!(
        matches!(err, HsmError::ObjectNotFound(id) if id == key.id),
        "{err}"
    );
    assert!(!hsm.run(move |s| s.exists(&key.id)).await.unwrap());
}

#[tokio::test]
async fn random_bytes_and_hmac_match_software() {
    use hmac::Mac;
    let hsm = testing::hsm();
    let value = [0x5Au8; 32];
    let spec = spec(
        SecretAlgorithm::HmacSha256,
        KeyRole::Authenticator,
        Exportability::Never,
    );
    let (a, b, mac, good, bad) = hsm
        .run(move |s| {
            let key = s.import_for_tests(&spec, "brandkms-test/hmac", &value)?;
            let mac = s.hmac_sha256(&key.id, b"settlement")?;
            let good = s.hmac_sha256_verify(&key.id, b"settlement", &mac)?;
            let bad = s.hmac_sha256_verify(&key.id, b"settlemenT", &mac)?;
            Ok((s.random(16)?, s.random(16)?, mac, good, bad))
        })
        .await
        .unwrap();
    assert_eq!(a.len(), 16);
    assert_ne!(a, b);
    let mut soft = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&value).unwrap();
    soft.update(b"settlement");
    assert_eq!(mac, soft.finalize().into_bytes().to_vec());
    assert!(good);
    assert!(!bad);
}

/// The token-side card protocol primitives reproduce docs/protocol.md §4.
#[tokio::test]
async fn derivation_and_cmac_reproduce_the_protocol_vectors() {
    let hsm = testing::hsm();
    let km = hex::decode("0123456789ABCDEFFEDCBA9876543210").unwrap();
    let ra = hex::decode("A1A2A3A4A5A6A7A8").unwrap();
    let rb = hex::decode("B1B2B3B4B5B6B7B8").unwrap();
    let mut ks_data = [0u8; 16];
    ks_data[..4].copy_from_slice(&ra[..4]);
    ks_data[4..8].copy_from_slice(&rb[..4]);
    ks_data[8..12].copy_from_slice(&ra[4..]);
    ks_data[12..].copy_from_slice(&rb[4..]);
    let payload =
        hex::decode("012000000000000007D04A505900112233445566778899AABBCCDDEEFF").unwrap();
    let msg = [&[0x01u8][..], &0u32.to_be_bytes(), &payload].concat();
    let c1_plain = [ra.clone(), rb.clone()].concat();
    let (kc_kcv, c1, mac) = hsm
        .run(move |s| {
            let master =
                s.import_for_tests(&master(SecretAlgorithm::Tdes2), "brandkms-test/v", &km)?;
            assert_eq!(master.kcv, [0x08, 0xD7, 0xB4]);
            let cid = hex::decode("0123456789012345").unwrap();
            let kc = s.derive_card_key(&master.id, EcbDerive::Des3, &option_a(&cid))?;
            let kc_kcv = s.tdes_ecb_encrypt_handle(kc.handle(), &[0u8; 8])?;
            let c1 = s.tdes_cbc_encrypt(kc.handle(), [0; 8], &c1_plain)?;
            assert_eq!(s.tdes_cbc_decrypt(kc.handle(), [0; 8], &c1)?, c1_plain);
            let ks = s.derive_session_key(&kc, &ks_data)?;
            let mac = s.tdes_cmac(ks.handle(), &msg)?;
            assert!(s.tdes_cmac_verify(ks.handle(), &msg, &mac)?);
            let mut forged = mac;
            forged[7] ^= 1;
            assert!(!s.tdes_cmac_verify(ks.handle(), &msg, &forged)?);
            Ok((kc_kcv, c1, mac))
        })
        .await
        .unwrap();
    assert_eq!(hex::encode_upper(&kc_kcv[..3]), "1DA5E1");
    assert_eq!(hex::encode_upper(c1), "97104CE0EA4DA1C92747D09AF302C9E3");
    assert_eq!(hex::encode_upper(mac), "C94D9DCE7DE29AF2");
    // The same CMAC in software (RustCrypto `cmac`) with the vector K_S.
    use cmac::Mac;
    let ks = hex::decode("ACF9FBDCDCCD1B45D1261A3207D006CA").unwrap();
    assert_eq!(des_kcv(&ks), [0xF2, 0xFC, 0xA7]);
    let mut soft = <cmac::Cmac<des::TdesEde2> as Mac>::new_from_slice(&ks).unwrap();
    soft.update(&[&[0x01u8][..], &0u32.to_be_bytes(), &payload].concat());
    assert_eq!(soft.finalize().into_bytes().to_vec(), mac.to_vec());
}

/// Single DES works here because the test token's OPENSSL_CONF activates the
/// legacy provider (the failure without it is shown through `kms doctor`).
#[tokio::test]
async fn single_des_derivation_works_with_the_legacy_provider() {
    let hsm = testing::hsm();
    let km = hex::decode("133457799BBCDFF1").unwrap();
    let kcv = hsm
        .run(move |s| {
            let master =
                s.import_for_tests(&master(SecretAlgorithm::Des), "brandkms-test/des", &km)?;
            let cid = hex::decode("0123456789012345").unwrap();
            let kc = s.derive_card_key(&master.id, EcbDerive::Des, &option_a(&cid))?;
            s.tdes_ecb_encrypt_handle(kc.handle(), &[0u8; 8])
        })
        .await
        .unwrap();
    let expected = des_kcv(&hex::decode("0FB64856C4388E1D0B493F4E22BD2038").unwrap());
    assert_eq!(kcv[..3], expected);
}

/// A transport key leaves the token once, wrapped with RSA-OAEP under the
/// participant's public key; the participant unwraps it in its own token and finds
/// the same KCV. Here the participant's key pair lives in the test token too.
#[tokio::test]
async fn a_transport_key_is_wrapped_under_an_rsa_public_key() {
    let hsm = testing::hsm();
    let (kcv, unwrapped_kcv, wrapped_len) = hsm
        .run(|s| {
            let (private, modulus, exponent) = s.generate_rsa_for_tests(2048)?;
            let transport = s.generate(
                &spec(
                    SecretAlgorithm::Aes256,
                    KeyRole::Transport,
                    Exportability::WrappedOnly,
                ),
                "brandkms-test/transport",
            )?;
            let public = s.import_rsa_public(&modulus, &exponent)?;
            let wrapped = s.wrap_rsa_oaep(&public, &transport.id)?;
            let (_, unwrapped) =
                s.unwrap_for_tests(&private, &wrapped, true, cryptoki::object::KeyType::AES)?;
            // A card master that is not exportable never leaves, even under RSA.
            let kept = s.generate(&master(SecretAlgorithm::Tdes2), "brandkms-test/kept")?;
            let err = s.wrap_rsa_oaep(&public, &kept.id).unwrap_err();
            assert_eq!(err.rv(), Some(RvError::KeyUnextractable), "{err}");
            Ok((transport.kcv, unwrapped, wrapped.len()))
        })
        .await
        .unwrap();
    assert_eq!(kcv, unwrapped_kcv);
    assert_eq!(wrapped_len, 256);
}
