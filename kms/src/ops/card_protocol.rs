//! The service's side of the brand card protocol (docs/protocol.md): byte layouts of
//! commands and receipts, and the token operations of the three passes and of
//! sealing. Every key operation runs in the token on derived session objects
//! (`K_C`, `K_S`) that are destroyed when the call ends; no key byte is read.

#![allow(
    clippy::indexing_slicing,
    reason = "constant ranges within fixed-size arrays (8, 16 and 29 bytes): the bounds are checked by the types"
)]

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::hsm::{CMAC_LEN, EcbDerive, HsmError, HsmSession, ObjectId};

/// Length of a command or receipt payload.
pub const PAYLOAD_LEN: usize = 29;
/// Payload format version.
pub const PAYLOAD_VERSION: u8 = 0x01;
/// MAC direction byte of a command (service to card).
pub const TO_CARD: u8 = 0x01;
/// MAC direction byte of a receipt (card to service).
pub const FROM_CARD: u8 = 0x02;

/// A command's operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Add value.
    Load,
    /// Subtract value.
    Debit,
    /// Report the balance.
    ReadBalance,
}

impl Op {
    /// The byte on the wire.
    pub fn code(self) -> u8 {
        match self {
            Op::Load => 0x10,
            Op::Debit => 0x20,
            Op::ReadBalance => 0x30,
        }
    }

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Load => "load",
            Op::Debit => "debit",
            Op::ReadBalance => "read_balance",
        }
    }
}

/// A command payload (29 bytes).
pub fn command_payload(op: Op, amount: u64, currency: &[u8; 3], txn_id: &[u8; 16]) -> [u8; 29] {
    let mut p = [0u8; PAYLOAD_LEN];
    p[0] = PAYLOAD_VERSION;
    p[1] = op.code();
    p[2..10].copy_from_slice(&amount.to_be_bytes());
    p[10..13].copy_from_slice(currency);
    p[13..29].copy_from_slice(txn_id);
    p
}

/// A card's receipt, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// 0 OK, 1 insufficient funds, 2 limit exceeded, 3 bad MAC, 4 bad counter, 5 unsupported.
    pub status: u8,
    /// The balance after the command.
    pub balance: u64,
    /// ISO 4217 letters.
    pub currency: [u8; 3],
    /// Copied from the command.
    pub txn_id: [u8; 16],
}

/// Parses a receipt payload; `None` when it is not one (length, version, status).
pub fn parse_receipt(p: &[u8]) -> Option<Receipt> {
    let p: &[u8; PAYLOAD_LEN] = p.try_into().ok()?;
    let [version, status, rest @ ..] = p;
    if *version != PAYLOAD_VERSION || *status > 5 {
        return None;
    }
    let (balance, rest) = rest.split_first_chunk::<8>()?;
    let (currency, txn_id) = rest.split_first_chunk::<3>()?;
    Some(Receipt {
        status: *status,
        balance: u64::from_be_bytes(*balance),
        currency: *currency,
        txn_id: txn_id.try_into().ok()?,
    })
}

/// The data a MAC covers: direction || counter || payload.
pub fn mac_input(direction: u8, counter: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(5 + payload.len());
    m.push(direction);
    m.extend_from_slice(&counter.to_be_bytes());
    m.extend_from_slice(payload);
    m
}

/// Which card key: the master's token object and how it derives.
#[derive(Clone, Copy, Debug)]
pub struct CardKey {
    /// The master `K_M`'s `CKA_ID`.
    pub master: ObjectId,
    /// DES3 for two- and three-key masters, DES for legacy single DES.
    pub derive: EcbDerive,
    /// The card's id, `CID`.
    pub cid: [u8; 8],
}

/// `CID || CID xor FF..FF`: the data of the card-key derivation.
pub fn card_key_data(cid: &[u8; 8]) -> [u8; 16] {
    let mut d = [0u8; 16];
    for (i, b) in cid.iter().enumerate() {
        d[i] = *b;
        d[i + 8] = !*b;
    }
    d
}

/// `RA[0..4] || RB[0..4] || RA[4..8] || RB[4..8]`: the data of the session-key derivation.
pub fn session_key_data(ra: &[u8; 8], rb: &[u8; 8]) -> Zeroizing<[u8; 16]> {
    let mut d = Zeroizing::new([0u8; 16]);
    d[0..4].copy_from_slice(&ra[0..4]);
    d[4..8].copy_from_slice(&rb[0..4]);
    d[8..12].copy_from_slice(&ra[4..8]);
    d[12..16].copy_from_slice(&rb[4..8]);
    d
}

/// What a genuine C1 gives: RA and C2.
pub type CardAnswer = (Zeroizing<[u8; 8]>, [u8; 16]);

/// `a || b`.
pub fn join(a: &[u8; 8], b: &[u8; 8]) -> Zeroizing<[u8; 16]> {
    let mut out = Zeroizing::new([0u8; 16]);
    out[0..8].copy_from_slice(a);
    out[8..16].copy_from_slice(b);
    out
}

/// Passes 2 and 3: decrypts C1 with `K_C`; when its second block is `RB`
/// (compared in constant time), returns RA and `C2 = CBC_KC(RB || RA)`.
pub fn check_c1(
    s: &HsmSession<'_>,
    key: &CardKey,
    rb: &[u8; 8],
    c1: &[u8; 16],
) -> Result<Option<CardAnswer>, HsmError> {
    let kc = s.derive_card_key(&key.master, key.derive, &card_key_data(&key.cid))?;
    let plain = Zeroizing::new(s.tdes_cbc_decrypt(kc.handle(), [0u8; 8], c1)?);
    let (Some(ra), Some(echo)) = (plain.get(0..8), plain.get(8..16)) else {
        return Ok(None);
    };
    if !bool::from(echo.ct_eq(rb)) {
        return Ok(None);
    }
    let mut ra_out = Zeroizing::new([0u8; 8]);
    ra_out.copy_from_slice(ra);
    let mut rb_ra = Zeroizing::new([0u8; 16]);
    rb_ra[0..8].copy_from_slice(rb);
    rb_ra[8..16].copy_from_slice(ra);
    let c2 = s.tdes_cbc_encrypt(kc.handle(), [0u8; 8], rb_ra.as_slice())?;
    let c2: [u8; 16] = c2
        .as_slice()
        .try_into()
        .map_err(|_| HsmError::InvalidInput("C2 is not 16 bytes"))?;
    Ok(Some((ra_out, c2)))
}

/// Passes 2 and 3 and the session's sealing, in one token call: on a genuine
/// C1, C2 and RA || RB sealed (AES-256-GCM, `seal_key`, the session id as
/// associated data) for the database.
pub fn complete(
    s: &HsmSession<'_>,
    key: &CardKey,
    rb: &[u8; 8],
    c1: &[u8; 16],
    seal_key: &ObjectId,
    session_id: &str,
) -> Result<Option<Completion>, HsmError> {
    let Some((ra, c2)) = check_c1(s, key, rb, c1)? else {
        return Ok(None);
    };
    let sealed = s.aes_gcm_seal(seal_key, session_id.as_bytes(), join(&ra, rb).as_slice())?;
    Ok(Some(Completion { c2, sealed }))
}

/// What a genuine C1 gives the service: C2 for the card, the sealed nonces for
/// the session row.
#[derive(Clone, Debug)]
pub struct Completion {
    /// `CBC_KC(RB || RA)`.
    pub c2: [u8; 16],
    /// RA || RB sealed under the session-seal key.
    pub sealed: Vec<u8>,
}

/// RA and RB of a session, opened from what [`complete`] sealed.
pub fn unseal_nonces(
    s: &HsmSession<'_>,
    seal_key: &ObjectId,
    session_id: &str,
    sealed: &[u8],
) -> Result<(Zeroizing<[u8; 8]>, [u8; 8]), HsmError> {
    let refused = || HsmError::InvalidInput("a session's sealed nonces do not open");
    let nonces = s
        .aes_gcm_open(seal_key, session_id.as_bytes(), sealed)?
        .ok_or_else(refused)?;
    let (Some(ra), Some(rb)) = (nonces.get(0..8), nonces.get(8..16)) else {
        return Err(refused());
    };
    let mut ra_out = Zeroizing::new([0u8; 8]);
    ra_out.copy_from_slice(ra);
    Ok((ra_out, rb.try_into().map_err(|_| refused())?))
}

/// `CMAC_KS(direction || counter || payload)`, re-deriving `K_C` and `K_S`.
pub fn mac(
    s: &HsmSession<'_>,
    key: &CardKey,
    ra: &[u8; 8],
    rb: &[u8; 8],
    data: &[u8],
) -> Result<[u8; CMAC_LEN], HsmError> {
    let kc = s.derive_card_key(&key.master, key.derive, &card_key_data(&key.cid))?;
    let ks = s.derive_session_key(&kc, &session_key_data(ra, rb))?;
    s.tdes_cmac(ks.handle(), data)
}

/// Verifies `CMAC_KS(data)` in the token.
pub fn verify_mac(
    s: &HsmSession<'_>,
    key: &CardKey,
    ra: &[u8; 8],
    rb: &[u8; 8],
    data: &[u8],
    mac: &[u8; CMAC_LEN],
) -> Result<bool, HsmError> {
    let kc = s.derive_card_key(&key.master, key.derive, &card_key_data(&key.cid))?;
    let ks = s.derive_session_key(&kc, &session_key_data(ra, rb))?;
    s.tdes_cmac_verify(ks.handle(), data, mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_vectors() {
        let txn = hex::decode("00112233445566778899AABBCCDDEEFF").unwrap();
        let p = command_payload(Op::Debit, 2000, b"JPY", &txn.try_into().unwrap());
        assert_eq!(
            hex::encode_upper(p),
            "012000000000000007D04A505900112233445566778899AABBCCDDEEFF"
        );
        let receipt =
            hex::decode("01000000000000000BB84A505900112233445566778899AABBCCDDEEFF").unwrap();
        let r = parse_receipt(&receipt).unwrap();
        assert_eq!((r.status, r.balance, &r.currency), (0, 3000, b"JPY"));
        assert!(parse_receipt(&receipt[..28]).is_none());
        assert_eq!(
            hex::encode_upper(card_key_data(&[
                0x01, 0x23, 0x45, 0x67, 0x89, 0x01, 0x23, 0x45
            ])),
            "0123456789012345FEDCBA9876FEDCBA"
        );
        let ra = [0xA1, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, 0xA8];
        let rb = [0xB1, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8];
        assert_eq!(
            hex::encode_upper(session_key_data(&ra, &rb).as_slice()),
            "A1A2A3A4B1B2B3B4A5A6A7A8B5B6B7B8"
        );
    }
}
