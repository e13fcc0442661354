//! Who may be a caller: certificates the brand CA signed but that must not
//! identify anyone (issue 12, item 1). Each is refused at the TLS handshake,
//! changes nothing and is counted with the other refused handshakes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;

use brandkms::server::identity::ENTITY_URI_PREFIX;
use brandkms_clients::Client;
use brandkms_proto::v1 as pb;
use brandkms_tests::{TestServer, on_each_database};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The brand CA of the test server's PKI, as an issuer.
fn brand_ca(pki: &Path) -> Issuer<'static, KeyPair> {
    let key = KeyPair::from_pem(&std::fs::read_to_string(pki.join("ca-key.pem")).unwrap()).unwrap();
    Issuer::from_ca_cert_pem(&std::fs::read_to_string(pki.join("ca.pem")).unwrap(), key).unwrap()
}

/// Parameters naming entity `id`, as a caller's certificate would.
fn naming(id: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, id.to_string());
    p.subject_alt_names = vec![SanType::URI(
        format!("{ENTITY_URI_PREFIX}{id}").try_into().unwrap(),
    )];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p
}

/// Writes `<name>.pem` (the chain, leaf first) and `<name>-key.pem`.
fn write(pki: &Path, name: &str, chain: &[String], key: &KeyPair) {
    std::fs::write(pki.join(format!("{name}.pem")), chain.concat()).unwrap();
    std::fs::write(pki.join(format!("{name}-key.pem")), key.serialize_pem()).unwrap();
}

/// A certificate made from `params`, signed by `issuer`, with a fresh key,
/// written as `<name>.pem` and `<name>-key.pem`.
fn issue(pki: &Path, name: &str, params: CertificateParams, issuer: &Issuer<'_, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    write(
        pki,
        name,
        &[params.signed_by(&key, issuer).unwrap().pem()],
        &key,
    );
}

/// The certificates of the red-team pass, each signed (directly or through a
/// participant) by the brand CA, each claiming to be officer-1.
fn write_rogues(pki: &Path) -> Vec<&'static str> {
    let brand = brand_ca(pki);

    // A participant given a CA:TRUE certificate signs a leaf naming officer-1
    // and presents leaf + its own certificate.
    let mut participant = naming("cybershop-r");
    participant.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    participant.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
    ];
    let participant_key = KeyPair::generate().unwrap();
    let participant_cert = participant
        .clone()
        .signed_by(&participant_key, &brand)
        .unwrap();
    let sub = Issuer::new(participant, participant_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = naming("officer-1").signed_by(&leaf_key, &sub).unwrap();
    write(
        pki,
        "rogue-through-participant",
        &[leaf.pem(), participant_cert.pem()],
        &leaf_key,
    );

    // A CA certificate naming officer-1 itself.
    let mut ca = naming("officer-1");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
    ];
    issue(pki, "rogue-ca", ca, &brand);

    // Key usage keyCertSign only; no key usage at all.
    let mut cert_sign = naming("officer-1");
    cert_sign.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    issue(pki, "rogue-keycertsign", cert_sign, &brand);
    let mut no_usage = naming("officer-1");
    no_usage.key_usages = Vec::new();
    issue(pki, "rogue-no-key-usage", no_usage, &brand);

    // Extended key usage serverAuth only.
    let mut server_only = naming("officer-1");
    server_only.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    issue(pki, "rogue-server-auth", server_only, &brand);

    // The control: made the same way, but as a caller's certificate should be.
    issue(pki, "officer-1-reissued", naming("officer-1"), &brand);
    vec![
        "rogue-through-participant",
        "rogue-ca",
        "rogue-keycertsign",
        "rogue-no-key-usage",
        "rogue-server-auth",
    ]
}

async fn create_key(
    client: &Client,
    alias: &str,
) -> Result<pb::Key, brandkms_clients::ClientError> {
    client
        .admin()
        .create_key(pb::CreateKeyRequest {
            alias: alias.to_string(),
            key_class: pb::KeyClass::CardAccess as i32,
            service_code: 0x0A01,
            purpose: pb::Purpose::Purchase as i32,
            ..Default::default()
        })
        .await
}

#[tokio::test]
async fn only_end_entity_signing_certificates_issued_by_the_brand_ca_identify_callers() {
    on_each_database(|s| async move {
        let rogues = write_rogues(&s.pki);
        for name in &rogues {
            let r = match Client::connect(&s.options(name)).await {
                Ok(c) => create_key(&c, &format!("key-{name}")).await.map(|_| ()),
                Err(e) => Err(e),
            };
            // Refused at the handshake: no status from the service's identity
            // layer, which would mean the certificate got that far.
            match r {
                Ok(()) => panic!("{name}: served as officer-1"),
                Err(e) => assert!(
                    !matches!(
                        e.code(),
                        Some(tonic::Code::Unauthenticated | tonic::Code::PermissionDenied)
                    ),
                    "{name}: {e}"
                ),
            }
        }
        // The control is served: the refusals are about the certificates.
        let control = s.client("officer-1-reissued").await;
        create_key(&control, "key-control").await.unwrap();

        let officer = s.client("officer-1").await;
        let keys = officer
            .admin()
            .list_keys(pb::ListKeysRequest::default())
            .await
            .unwrap();
        let aliases: Vec<_> = keys
            .keys
            .iter()
            .map(|k| k.alias.as_str())
            .filter(|a| !a.starts_with("brandkms."))
            .collect();
        assert_eq!(aliases, ["key-control"], "nothing made by a rogue");
        s
    })
    .await;
}

/// A CRL from the brand CA revoking the certificates with the serial numbers
/// `revoked`, written to `crl.pem`.
fn write_crl(pki: &Path, number: u64, revoked: &[u64]) {
    let brand = brand_ca(pki);
    let revoked_certs = revoked
        .iter()
        .map(|serial| rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from(*serial),
            revocation_time: rcgen::date_time_ymd(2026, 1, 1),
            reason_code: Some(rcgen::RevocationReason::KeyCompromise),
            invalidity_date: None,
        })
        .collect();
    let crl = rcgen::CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2026, 1, 1),
        next_update: rcgen::date_time_ymd(2036, 1, 1),
        crl_number: rcgen::SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&brand)
    .unwrap();
    // Written aside and renamed, as an operator's tooling would.
    std::fs::write(pki.join("crl.pem.new"), crl.pem().unwrap()).unwrap();
    std::fs::rename(pki.join("crl.pem.new"), pki.join("crl.pem")).unwrap();
}

async fn served(s: &TestServer, name: &str) -> bool {
    match Client::connect(&s.options(name)).await {
        Ok(c) => c
            .admin()
            .list_keys(pb::ListKeysRequest::default())
            .await
            .is_ok(),
        Err(_) => false,
    }
}

/// Issue 12, item 2: one of an entity's certificates is revoked through the brand
/// CA's CRL (`tls.crl`), without suspending the entity: that certificate is
/// refused at the handshake once the service has read the new list, the
/// entity's other certificate keeps working.
#[tokio::test]
async fn a_revoked_certificate_is_refused_while_the_entitys_other_one_works() {
    for db in brandkms::testing::databases().await {
        let s = TestServer::start_configured(db, TestServer::single_officer(), |pki, tls| {
            write_crl(pki, 1, &[]);
            tls.crl = Some(pki.join("crl.pem"));
        })
        .await;
        // A second certificate of officer-1's, the one to be revoked.
        const SERIAL: u64 = 0x5eed_0001;
        let mut second = naming("officer-1");
        second.serial_number = Some(rcgen::SerialNumber::from(SERIAL));
        issue(&s.pki, "officer-1-second", second, &brand_ca(&s.pki));
        assert!(served(&s, "officer-1").await);
        assert!(served(&s, "officer-1-second").await);

        write_crl(&s.pki, 2, &[SERIAL]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while served(&s, "officer-1-second").await {
            assert!(
                std::time::Instant::now() < deadline,
                "the revoked certificate is still served after 20 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        assert!(served(&s, "officer-1").await, "{}", s.backend);
        assert!(served(&s, "officer-2").await);
        s.stop().await;
    }
}
