//! Input bounds: every string and bytes field of every request message has a
//! maximum length, and every repeated field a maximum count, checked when the
//! message is decoded (by [`BoundedCodec`], the codec of every generated service
//! and client), before a handler sees it. A refusal names the message, the field,
//! its length and the maximum, and never quotes the field's content.
//!
//! The same codec answers a request that is not valid protobuf (truncated,
//! invalid UTF-8 in a string field, wrong wire type) with `InvalidArgument`
//! rather than prost's `Internal`: it is the caller's input that is wrong.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

use crate::blob;
use crate::v1::*;

/// Aliases, entity ids, challenge, session, tie-up and approval ids
/// (`[a-z0-9._-]`, 1 to 64 characters).
pub const NAME: usize = 64;
/// A page token (the paging code refuses longer ones too).
pub const PAGE_TOKEN: usize = 1024;
/// An audit operation filter such as `CardAuthentication/CompleteAuthentication`.
pub const OPERATION: usize = 128;
/// An entity's display name: 200 characters of up to 4 bytes.
pub const ENTITY_NAME: usize = 800;
/// A rejection's reason: 500 characters of up to 4 bytes.
pub const REJECT_REASON: usize = 2000;
/// A currency code (three letters; a little room for a precise refusal).
pub const CURRENCY: usize = 8;
/// Fixed-size card values (card id 8, C1 16, payload 29, CMAC 8 bytes; a MAC of
/// the settlement service 32 bytes): the handlers check the exact size.
pub const SMALL_BYTES: usize = 64;
/// An RSA ciphertext or signature (RSA-8192).
pub const RSA_BYTES: usize = blob::MAX_CIPHERTEXT;
/// A sealed blob: magic, alias length, alias, version, hash, length, ciphertext.
pub const BLOB: usize = 4 + 1 + NAME + 4 + 1 + 2 + blob::MAX_CIPHERTEXT;
/// An RSA public key's SubjectPublicKeyInfo, DER (RSA-8192 is about 1,100 bytes).
pub const SPKI_DER: usize = 4096;
/// Data to sign, verify or MAC.
pub const DATA: usize = 1 << 20;
/// Keys of one tie-up.
pub const TIE_UP_KEYS: usize = 256;
/// Keys of one bulk import: at their largest (every field at its bound)
/// about 165 bytes each encoded, so that a whole request fits in
/// [`MAX_OTHER_REQUEST`].
pub const BULK_KEYS: usize = 350;
/// A key wrapped with RFC 5649 (40 bytes for a 32-byte key; room for a
/// precise refusal).
pub const WRAPPED_SECRET: usize = 48;
/// A stated key check value (3 bytes; room for a precise refusal).
pub const KCV: usize = 8;
/// Sensitive operation names in a dual-control set (each at most [`NAME`]).
pub const DUAL_CONTROL_OPERATIONS: usize = 32;

/// The largest request message any service accepts, encoded: the settlement
/// service's (data, signature and alias with their tags and lengths), with room
/// to spare. The server's `max_decoding_message_size` for that service.
pub const MAX_SETTLEMENT_REQUEST: usize = DATA + 16 * 1024;
/// The largest request message of the other services, encoded (a tie-up of
/// [`TIE_UP_KEYS`] keys is about 20 KiB).
pub const MAX_OTHER_REQUEST: usize = 64 * 1024;

/// Response metadata the codec puts on a request it refused (over a bound, or
/// not valid protobuf), so that the server's identity layer, which sees only the
/// response, can audit the refusal; that layer removes it before the response
/// leaves.
pub const REFUSED_INPUT_MARKER: &str = "brandkms-refused-input";

/// A request refused by the codec: `InvalidArgument`, marked for the audit.
fn refused(message: String) -> Status {
    let mut status = Status::invalid_argument(message);
    status.metadata_mut().insert(
        REFUSED_INPUT_MARKER,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    status
}

/// A field over its bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitError {
    /// The message, e.g. `GetPublicKeyRequest`.
    pub message: &'static str,
    /// The field, e.g. `alias` (`keys[3].alias` inside a repeated field).
    pub field: String,
    /// Its length in bytes (or items, for a repeated field).
    pub len: usize,
    /// The bound.
    pub max: usize,
    /// Bytes or items.
    pub unit: &'static str,
}

impl std::fmt::Display for LimitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}.{} is {} {}; at most {} are accepted",
            self.message, self.field, self.len, self.unit, self.max
        )
    }
}

impl std::error::Error for LimitError {}

/// A message whose fields have bounds.
pub trait Limits {
    /// True for the messages a server decodes (requests): their decoding
    /// failures are the caller's (`InvalidArgument`); a client decoding a
    /// response keeps `Internal`.
    const REQUEST: bool;

    /// Every string, bytes and repeated field within its bound.
    fn check_limits(&self) -> Result<(), LimitError>;
}

/// A field that has a length.
trait Bounded {
    fn check(&self, message: &'static str, field: &str, max: usize) -> Result<(), LimitError>;
}

impl Bounded for String {
    fn check(&self, message: &'static str, field: &str, max: usize) -> Result<(), LimitError> {
        within(message, field, self.len(), max, "bytes")
    }
}

impl Bounded for Vec<u8> {
    fn check(&self, message: &'static str, field: &str, max: usize) -> Result<(), LimitError> {
        within(message, field, self.len(), max, "bytes")
    }
}

/// Repeated messages: the count, then each item's own fields.
impl<T: Limits> Bounded for Vec<T> {
    fn check(&self, message: &'static str, field: &str, max: usize) -> Result<(), LimitError> {
        within(message, field, self.len(), max, "items")?;
        for (i, k) in self.iter().enumerate() {
            k.check_limits().map_err(|e| LimitError {
                message,
                field: format!("{field}[{i}].{}", e.field),
                ..e
            })?;
        }
        Ok(())
    }
}

impl Bounded for Vec<String> {
    fn check(&self, message: &'static str, field: &str, max: usize) -> Result<(), LimitError> {
        within(message, field, self.len(), max, "items")?;
        for (i, item) in self.iter().enumerate() {
            within(message, &format!("{field}[{i}]"), item.len(), NAME, "bytes")?;
        }
        Ok(())
    }
}

fn within(
    message: &'static str,
    field: &str,
    len: usize,
    max: usize,
    unit: &'static str,
) -> Result<(), LimitError> {
    if len > max {
        Err(LimitError {
            message,
            field: field.to_string(),
            len,
            max,
            unit,
        })
    } else {
        Ok(())
    }
}

/// Declares the bounds of request messages (`Message { field: max, ... }`) and
/// lists them in [`FIELD_LIMITS`].
macro_rules! requests {
    ($($message:ident { $($field:ident : $max:expr),* $(,)? }),+ $(,)?) => {
        $(
            impl Limits for $message {
                const REQUEST: bool = true;

                fn check_limits(&self) -> Result<(), LimitError> {
                    $(Bounded::check(&self.$field, stringify!($message), stringify!($field), $max)?;)*
                    Ok(())
                }
            }
        )+

        /// Every bounded field: (message, field, bound), for the test that every
        /// string, bytes and repeated field of every request message has one.
        pub const FIELD_LIMITS: &[(&str, &str, usize)] = &[
            $($((stringify!($message), stringify!($field), $max),)*)+
        ];

        /// Every message with bounds.
        pub const BOUNDED_MESSAGES: &[&str] = &[$(stringify!($message)),+];
    };
}

/// Response messages: nothing to bound (the server wrote them).
macro_rules! responses {
    ($($message:ident),+ $(,)?) => {
        $(
            impl Limits for $message {
                const REQUEST: bool = false;

                fn check_limits(&self) -> Result<(), LimitError> {
                    Ok(())
                }
            }
        )+
    };
}

requests! {
    // Admin.
    CreateKeyRequest { alias: NAME, owner_entity: NAME },
    RotateKeyRequest { alias: NAME },
    SetKeyVersionStateRequest { alias: NAME },
    ScheduleKeyVersionDestructionRequest { alias: NAME },
    CancelKeyVersionDestructionRequest { alias: NAME },
    GetKeyRequest { alias: NAME },
    ListKeysRequest { page_token: PAGE_TOKEN },
    RegisterEntityRequest { id: NAME, name: ENTITY_NAME },
    CreateImportKeyRequest {},
    GetImportParametersRequest {},
    ImportKeyRequest { alias: NAME, wrapped_key: RSA_BYTES, expected_kcv: SMALL_BYTES },
    BulkKey { alias: NAME, wrapped_key: WRAPPED_SECRET, expected_kcv: KCV },
    ImportKeysRequest { kek_alias: NAME, keys: BULK_KEYS },
    SetKeyVersionCryptoperiodRequest { alias: NAME },
    MarkKeyVersionCompromisedRequest { alias: NAME, reason: REJECT_REASON },
    TrustParticipantKeyRequest { entity_id: NAME, spki_der: SPKI_DER, fingerprint_sha256: NAME, so_pin: NAME },
    EntityRef { id: NAME },
    ListEntitiesRequest { page_token: PAGE_TOKEN },
    TieUpKey { alias: NAME },
    CreateTieUpRequest { entity_id: NAME, keys: TIE_UP_KEYS, sponsor_issuer: NAME },
    UpdateTieUpRequest { id: NAME, keys: TIE_UP_KEYS },
    TieUpRef { id: NAME },
    ListTieUpsRequest { entity_id: NAME, page_token: PAGE_TOKEN },
    ListDistributionsRequest { alias: NAME, entity_id: NAME, page_token: PAGE_TOKEN },
    ListApprovalsRequest { page_token: PAGE_TOKEN },
    ApprovalRef { id: NAME },
    RejectRequest { id: NAME, reason: REJECT_REASON },
    GetDualControlRequest {},
    SetDualControlRequest { operations: DUAL_CONTROL_OPERATIONS },
    ListAuditRequest { caller: NAME, operation: OPERATION, page_token: PAGE_TOKEN, request_id: NAME },
    VerifyAuditRequest {},
    // KeyDistribution.
    EstablishTransportKeyRequest { rsa_public_key_spki_der: SPKI_DER },
    RequestKeyRequest { alias: NAME },
    ListEntitledKeysRequest { page_token: PAGE_TOKEN },
    ConsentRequest { issuer: NAME, third_party: NAME, alias: NAME },
    ListConsentsRequest { page_token: PAGE_TOKEN },
    // CardAuthentication and ProxyLoading.
    BeginAuthenticationRequest { alias: NAME, card_id: SMALL_BYTES },
    CompleteAuthenticationRequest { challenge_id: NAME, c1: SMALL_BYTES },
    SealCommandRequest { session_id: NAME, currency: CURRENCY },
    VerifyReceiptRequest { session_id: NAME, payload: SMALL_BYTES, mac: SMALL_BYTES },
    ListProxyLoadsRequest { issuer: NAME, page_token: PAGE_TOKEN },
    SummarizeProxyLoadsRequest { issuer: NAME },
    // Settlement.
    GetPublicKeyRequest { alias: NAME },
    DecryptRequest { alias: NAME, ciphertext: RSA_BYTES },
    DecryptItem { blob: BLOB },
    SignRequest { alias: NAME, data: DATA },
    VerifyRequest { alias: NAME, data: DATA, signature: RSA_BYTES },
    GenerateMacRequest { alias: NAME, data: DATA },
    VerifyMacRequest { alias: NAME, data: DATA, mac: SMALL_BYTES },
}

responses! {
    Key, KeyChange, ListKeysResponse, Entity, ListEntitiesResponse, TieUpChange, TieUp,
    ListTieUpsResponse, ListDistributionsResponse, ListApprovalsResponse, ApproveResponse,
    Approval, ListAuditResponse, VerifyAuditResponse, EntityChange, DualControl,
    DualControlChange, ImportParameters, ImportKeysChange, ImportKeysResponse,
    TransportKey, WrappedKey, ListEntitledKeysResponse, Consent, ListConsentsResponse,
    Challenge, AuthenticationResult, SealedCommand, ReceiptVerification,
    ListProxyLoadsResponse, ProxyLoadSummary,
    PublicKey, DecryptResponse, DecryptResult, SignResponse, VerifyResponse,
    GenerateMacResponse,
}

/// The codec of every generated service and client: prost's, with
/// [`Limits`] checked on every decoded message and, for requests, decoding
/// failures answered `InvalidArgument`.
#[derive(Debug, Clone)]
pub struct BoundedCodec<T, U> {
    inner: ProstCodec<T, U>,
}

impl<T, U> Default for BoundedCodec<T, U> {
    fn default() -> Self {
        BoundedCodec {
            inner: ProstCodec::default(),
        }
    }
}

impl<T, U> Codec for BoundedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Limits + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = BoundedEncoder<<ProstCodec<T, U> as Codec>::Encoder>;
    type Decoder = BoundedDecoder<<ProstCodec<T, U> as Codec>::Decoder, U>;

    fn encoder(&mut self) -> Self::Encoder {
        BoundedEncoder(self.inner.encoder())
    }

    fn decoder(&mut self) -> Self::Decoder {
        BoundedDecoder(self.inner.decoder(), PhantomData)
    }
}

/// prost's encoder, unchanged.
#[derive(Debug)]
pub struct BoundedEncoder<E>(E);

impl<E: Encoder<Error = Status>> Encoder for BoundedEncoder<E> {
    type Item = E::Item;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        self.0.encode(item, dst)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// prost's decoder, then the bounds.
#[derive(Debug)]
pub struct BoundedDecoder<D, U>(D, PhantomData<fn() -> U>);

impl<D, U> Decoder for BoundedDecoder<D, U>
where
    D: Decoder<Item = U, Error = Status>,
    U: Limits,
{
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let item = match self.0.decode(buf) {
            Ok(item) => item,
            // prost's DecodeError names the message and field, never the content.
            Err(status) if U::REQUEST && status.code() == Code::Internal => {
                return Err(refused(format!(
                    "the request is not valid protobuf: {}",
                    status.message()
                )));
            }
            Err(status) => return Err(status),
        };
        if let Some(message) = &item {
            message.check_limits().map_err(|e| {
                if U::REQUEST {
                    refused(e.to_string())
                } else {
                    Status::internal(format!("response out of bounds: {e}"))
                }
            })?;
        }
        Ok(item)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::field_descriptor_proto::{Label, Type};

    /// Every string, bytes and repeated field of every input message of every
    /// brandkms.v1 method (and of the messages they contain) has a bound here,
    /// so that a new field cannot arrive unbounded.
    #[test]
    fn every_request_field_is_bounded() {
        let set =
            prost_types::FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET).unwrap_or_default();
        let messages: std::collections::HashMap<String, &prost_types::DescriptorProto> = set
            .file
            .iter()
            .flat_map(|f| f.message_type.iter())
            .map(|m| (format!(".brandkms.v1.{}", m.name()), m))
            .collect();
        let mut todo: Vec<String> = set
            .file
            .iter()
            .flat_map(|f| f.service.iter())
            .flat_map(|s| s.method.iter())
            .map(|m| m.input_type().to_string())
            .collect();
        assert!(todo.len() > 30, "the descriptor set lists the methods");
        let mut seen = std::collections::HashSet::new();
        let mut missing = Vec::new();
        while let Some(full) = todo.pop() {
            if !seen.insert(full.clone()) {
                continue;
            }
            let Some(m) = messages.get(&full) else {
                missing.push(format!("{full}: not in the descriptor set"));
                continue;
            };
            if !BOUNDED_MESSAGES.contains(&m.name()) {
                missing.push(format!("{}: no bounds", m.name()));
            }
            for f in &m.field {
                let needs = matches!(f.r#type(), Type::String | Type::Bytes)
                    || f.label() == Label::Repeated;
                if f.r#type() == Type::Message {
                    todo.push(f.type_name().to_string());
                }
                if needs
                    && !FIELD_LIMITS
                        .iter()
                        .any(|(msg, field, _)| *msg == m.name() && *field == f.name())
                {
                    missing.push(format!("{}.{}", m.name(), f.name()));
                }
            }
        }
        assert!(missing.is_empty(), "unbounded request fields: {missing:?}");
    }

    #[test]
    fn a_long_field_is_refused_without_its_content() {
        let r = GetPublicKeyRequest {
            alias: "x".repeat(3 << 20),
            version: 0,
        };
        let e = r.check_limits().err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("GetPublicKeyRequest.alias is 3145728 bytes; at most 64 are accepted")
        );
        let t = CreateTieUpRequest {
            keys: vec![
                TieUpKey::default(),
                TieUpKey {
                    alias: "y".repeat(65),
                    mode: 0,
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            t.check_limits().err().map(|e| e.field),
            Some("keys[1].alias".to_string())
        );
    }

    #[test]
    fn the_largest_settlement_request_fits() {
        let r = VerifyRequest {
            alias: "a".repeat(NAME),
            version: u32::MAX,
            data: vec![0xff; DATA],
            signature: vec![0xff; RSA_BYTES],
        };
        assert!(r.encoded_len() <= MAX_SETTLEMENT_REQUEST);
        let t = CreateTieUpRequest {
            entity_id: "e".repeat(NAME),
            keys: vec![
                TieUpKey {
                    alias: "a".repeat(NAME),
                    mode: 3,
                };
                TIE_UP_KEYS
            ],
            valid_from: i64::MAX,
            valid_until: i64::MAX,
            sponsor_issuer: "s".repeat(NAME),
            per_transaction_limit: Some(u64::MAX),
        };
        assert!(t.encoded_len() <= MAX_OTHER_REQUEST);
        let b = ImportKeysRequest {
            kek_alias: "k".repeat(NAME),
            kek_version: u32::MAX,
            keys: vec![
                BulkKey {
                    alias: "a".repeat(NAME),
                    algorithm: i32::MAX,
                    service_code: u32::MAX,
                    purpose: i32::MAX,
                    exportable: true,
                    allow_legacy_des: true,
                    wrapped_key: vec![0xff; WRAPPED_SECRET],
                    expected_kcv: vec![0xff; KCV],
                    not_before: i64::MIN,
                    not_after: i64::MIN,
                };
                BULK_KEYS
            ],
        };
        assert!(b.check_limits().is_ok());
        assert!(
            b.encoded_len() <= MAX_OTHER_REQUEST,
            "{} > {MAX_OTHER_REQUEST}",
            b.encoded_len()
        );
    }
}
