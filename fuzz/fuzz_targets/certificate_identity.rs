//! Certificate identity extraction: any bytes as the client's leaf certificate
//! (the handshake has checked the signature chain, but the contents are what
//! the issuer put there). Nothing panics; an identity found is a valid entity id.
#![no_main]

use brandkms::ops::valid_name;
use brandkms::server::identity;
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateDer;

fuzz_target!(|data: &[u8]| {
    let cert = CertificateDer::from(data.to_vec());
    let _ = identity::caller_constraints(&cert);
    if let Ok(peer) = identity::identify(&[cert.clone()]) {
        assert!(valid_name(&peer.entity_id));
        assert_eq!(peer.fingerprint, identity::fingerprint(&cert));
    }
});
