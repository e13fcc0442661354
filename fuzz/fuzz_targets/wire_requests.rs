//! Wire to domain: any bytes decoded as a request message (the first byte picks
//! which), its field bounds checked, then converted to the domain types the
//! handlers use. Nothing panics; whatever converts satisfies the domain's rules.
#![no_main]

use brandkms::ops::valid_name;
use brandkms::service::convert;
use brandkms_proto::limits::Limits;
use brandkms_proto::v1 as pb;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn decoded<M: Message + Default + Limits>(bytes: &[u8]) -> Option<M> {
    let m = M::decode(bytes).ok()?;
    m.check_limits().ok()?;
    Some(m)
}

fuzz_target!(|data: &[u8]| {
    let Some((which, bytes)) = data.split_first() else {
        return;
    };
    match which % 8 {
        0 => {
            if let Some(r) = decoded::<pb::CreateKeyRequest>(bytes) {
                if let Ok(k) = brandkms::ops::keys::CreateKey::try_from(r.clone()) {
                    assert!(valid_name(&k.alias));
                }
                if let Ok(k) = brandkms::ops::settlement::CreateSettlementKey::try_from(r.clone()) {
                    assert!(valid_name(&k.alias));
                }
                if let Ok(alias) = convert::authenticator_request(r) {
                    assert!(valid_name(&alias));
                }
            }
        }
        1 => {
            if let Some(r) = decoded::<pb::RegisterEntityRequest>(bytes)
                && let Ok(e) = brandkms::ops::entities::RegisterEntity::try_from(r)
            {
                assert!(valid_name(&e.id));
            }
        }
        2 => {
            if let Some(r) = decoded::<pb::CreateTieUpRequest>(bytes) {
                let _ = brandkms::ops::tieups::CreateTieUp::try_from(r);
            }
        }
        3 => {
            if let Some(r) = decoded::<pb::UpdateTieUpRequest>(bytes) {
                let _ = brandkms::ops::tieups::UpdateTieUp::try_from(r);
            }
        }
        4 => {
            if let Some(r) = decoded::<pb::BeginAuthenticationRequest>(bytes) {
                let _ = convert::name("alias", &r.alias);
                let _ = convert::version(r.key_version);
            }
        }
        5 => {
            if let Some(r) = decoded::<pb::DecryptRequest>(bytes) {
                let _ = convert::name("alias", &r.alias);
                let _ = convert::version(r.version);
            }
        }
        6 => {
            if let Some(r) = decoded::<pb::EstablishTransportKeyRequest>(bytes) {
                let _ = brandkms::ops::distribution::parse_rsa_spki(&r.rsa_public_key_spki_der);
            }
        }
        _ => {
            if let Some(r) = decoded::<pb::ListAuditRequest>(bytes) {
                let _ = convert::optional_time("start_time", r.start_time);
                let _ = convert::optional_name("caller", &r.caller);
                // A page token is the caller's to forge: it must be refused, not trusted.
                if let Ok(page) = brandkms::service::paging::PageRequest::new(
                    "audit",
                    &[&r.caller, &r.operation],
                    r.page_size,
                    &r.page_token,
                ) {
                    assert!(
                        page.size >= 1 && page.size <= brandkms::service::paging::MAX_PAGE_SIZE
                    );
                }
            }
        }
    }
});
