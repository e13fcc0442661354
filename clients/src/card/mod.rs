//! A software IC card of the brand (the card side of docs/protocol.md), with RustCrypto
//! `des` and `cmac`. It holds one card key per (service code, key version), a
//! balance and a maximum balance; answers challenges, checks the service's C2,
//! checks sealed commands' MACs and counters, applies LOAD / DEBIT /
//! READ_BALANCE and answers receipts with MACs. Its state is a JSON file (0600)
//! so that a command line can use the same card across calls.
//!
//! Personalisation takes each card key from the issuer (`issuer personalise`
//! derives it in the issuer's own token from a delivered master), never from
//! the brand.

#![allow(
    clippy::indexing_slicing,
    reason = "constant ranges within fixed-size arrays (8, 16 and 29 bytes): the bounds are checked by the types"
)]

use std::path::Path;

use cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use cmac::{Cmac, Mac};
use des::{Des, TdesEde2, TdesEde3};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

/// Payload length of commands and receipts.
pub const PAYLOAD_LEN: usize = 29;

/// Receipt statuses.
pub mod status {
    /// Done.
    pub const OK: u8 = 0x00;
    /// A DEBIT above the balance.
    pub const INSUFFICIENT_FUNDS: u8 = 0x01;
    /// A LOAD above the maximum balance.
    pub const LIMIT_EXCEEDED: u8 = 0x02;
    /// The command's MAC does not verify.
    pub const BAD_MAC: u8 = 0x03;
    /// A counter the card has already seen.
    pub const BAD_COUNTER: u8 = 0x04;
    /// Unknown version, op or currency.
    pub const UNSUPPORTED: u8 = 0x05;
}

/// What the card refuses outright (no receipt can be made).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CardError {
    /// No key for this service code and version.
    #[error("the card has no key for service code {service_code:#06X} version {version}")]
    NoKey {
        /// Service code.
        service_code: u16,
        /// Key version.
        version: u32,
    },
    /// C2 arrived without a challenge answered.
    #[error("no authentication in progress")]
    NotAuthenticating,
    /// C2 does not decrypt to RB || RA: the service is not genuine.
    #[error("the service's cryptogram C2 does not verify: service not authenticated")]
    ServiceNotAuthenticated,
    /// A command without a session.
    #[error("no authenticated session")]
    NoSession,
    /// Bad lengths.
    #[error("{0}")]
    Malformed(&'static str),
    /// The state file.
    #[error("card file {path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// One card key.
#[derive(Clone, Serialize, Deserialize)]
pub struct CardKeyEntry {
    /// The master's service code.
    pub service_code: u16,
    /// The master's version.
    pub version: u32,
    /// K_C, hex (16 bytes).
    pub key: String,
}

impl Drop for CardKeyEntry {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl std::fmt::Debug for CardKeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CardKeyEntry({:#06X} v{})",
            self.service_code, self.version
        )
    }
}

#[derive(Clone, Serialize, Deserialize, Default)]
struct Pending {
    key: String,
    ra: String,
    rb: String,
}

#[derive(Clone, Serialize, Deserialize, Default)]
struct Session {
    ks: String,
    last_counter: Option<u32>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.key.zeroize();
        self.ra.zeroize();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.ks.zeroize();
    }
}

/// The card.
#[derive(Clone, Serialize, Deserialize)]
pub struct Card {
    /// CID, hex (8 bytes).
    pub card_id: String,
    /// Its keys.
    pub keys: Vec<CardKeyEntry>,
    /// Balance in minor units.
    pub balance: u64,
    /// Maximum balance.
    pub max_balance: u64,
    /// ISO 4217 letters.
    pub currency: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pending: Option<Pending>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    session: Option<Session>,
}

impl std::fmt::Debug for Card {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Card")
            .field("card_id", &self.card_id)
            .field("keys", &self.keys)
            .field("balance", &self.balance)
            .field("currency", &self.currency)
            .finish_non_exhaustive()
    }
}

fn hex_array<const N: usize>(s: &str) -> Result<Zeroizing<[u8; N]>, CardError> {
    let v = Zeroizing::new(hex::decode(s).map_err(|_| CardError::Malformed("not hex"))?);
    let mut out = Zeroizing::new([0u8; N]);
    if v.len() != N {
        return Err(CardError::Malformed("wrong length"));
    }
    out.copy_from_slice(&v);
    Ok(out)
}

/// `E_K(block)` with a DES, two-key or three-key TDES key.
pub fn ecb_encrypt(key: &[u8], block: &[u8; 8]) -> Result<[u8; 8], CardError> {
    let mut b = cipher::generic_array::GenericArray::clone_from_slice(block);
    match key.len() {
        8 => Des::new_from_slice(key).map(|c| c.encrypt_block(&mut b)),
        16 => TdesEde2::new_from_slice(key).map(|c| c.encrypt_block(&mut b)),
        24 => TdesEde3::new_from_slice(key).map(|c| c.encrypt_block(&mut b)),
        _ => return Err(CardError::Malformed("a DES key is 8, 16 or 24 bytes")),
    }
    .map_err(|_| CardError::Malformed("bad key"))?;
    Ok(b.into())
}

fn tdes2(key: &[u8; 16]) -> Result<TdesEde2, CardError> {
    TdesEde2::new_from_slice(key).map_err(|_| CardError::Malformed("bad key"))
}

/// `CBC_K(X)` with a two-key TDES key, IV zero, 16 bytes.
pub fn cbc_encrypt(key: &[u8; 16], data: &[u8; 16]) -> Result<[u8; 16], CardError> {
    let c = tdes2(key)?;
    let mut out = [0u8; 16];
    let mut prev = [0u8; 8];
    for (i, chunk) in data.chunks_exact(8).enumerate() {
        let mut b = cipher::generic_array::GenericArray::clone_from_slice(chunk);
        for (x, p) in b.iter_mut().zip(prev) {
            *x ^= p;
        }
        c.encrypt_block(&mut b);
        prev.copy_from_slice(&b);
        out[i * 8..i * 8 + 8].copy_from_slice(&b);
    }
    Ok(out)
}

/// The inverse of [`cbc_encrypt`].
pub fn cbc_decrypt(key: &[u8; 16], data: &[u8; 16]) -> Result<Zeroizing<[u8; 16]>, CardError> {
    let c = tdes2(key)?;
    let mut out = Zeroizing::new([0u8; 16]);
    let mut prev = [0u8; 8];
    for (i, chunk) in data.chunks_exact(8).enumerate() {
        let mut b = cipher::generic_array::GenericArray::clone_from_slice(chunk);
        c.decrypt_block(&mut b);
        for (x, p) in b.iter_mut().zip(prev) {
            *x ^= p;
        }
        prev.copy_from_slice(chunk);
        out[i * 8..i * 8 + 8].copy_from_slice(&b);
    }
    Ok(out)
}

/// EMV Option A with Y = CID: `E_KM(CID) || E_KM(CID xor FF..FF)`. For the
/// vectors and tests; a card is personalised from the issuer's token.
pub fn diversify(master: &[u8], cid: &[u8; 8]) -> Result<Zeroizing<[u8; 16]>, CardError> {
    let inverted: [u8; 8] = cid.map(|b| !b);
    let mut k = Zeroizing::new([0u8; 16]);
    k[0..8].copy_from_slice(&ecb_encrypt(master, cid)?);
    k[8..16].copy_from_slice(&ecb_encrypt(master, &inverted)?);
    Ok(k)
}

/// `K_S = E_KC(RA[0..4] || RB[0..4] || RA[4..8] || RB[4..8])`.
pub fn session_key(
    kc: &[u8; 16],
    ra: &[u8; 8],
    rb: &[u8; 8],
) -> Result<Zeroizing<[u8; 16]>, CardError> {
    let mut d1 = [0u8; 8];
    let mut d2 = [0u8; 8];
    d1[0..4].copy_from_slice(&ra[0..4]);
    d1[4..8].copy_from_slice(&rb[0..4]);
    d2[0..4].copy_from_slice(&ra[4..8]);
    d2[4..8].copy_from_slice(&rb[4..8]);
    let mut ks = Zeroizing::new([0u8; 16]);
    ks[0..8].copy_from_slice(&ecb_encrypt(kc, &d1)?);
    ks[8..16].copy_from_slice(&ecb_encrypt(kc, &d2)?);
    d1.zeroize();
    d2.zeroize();
    Ok(ks)
}

/// The key check value: `E_K(00 x 8)[0..3]`.
pub fn kcv(key: &[u8]) -> Result<[u8; 3], CardError> {
    let e = ecb_encrypt(key, &[0u8; 8])?;
    Ok([e[0], e[1], e[2]])
}

/// `CMAC_KS(direction || counter || payload)`.
pub fn mac(
    ks: &[u8; 16],
    direction: u8,
    counter: u32,
    payload: &[u8],
) -> Result<[u8; 8], CardError> {
    let mut m =
        <Cmac<TdesEde2> as Mac>::new_from_slice(ks).map_err(|_| CardError::Malformed("bad key"))?;
    m.update(&[direction]);
    m.update(&counter.to_be_bytes());
    m.update(payload);
    Ok(m.finalize().into_bytes().into())
}

/// A receipt payload.
pub fn receipt_payload(
    status: u8,
    balance: u64,
    currency: &[u8; 3],
    txn_id: &[u8; 16],
) -> [u8; 29] {
    let mut p = [0u8; PAYLOAD_LEN];
    p[0] = 0x01;
    p[1] = status;
    p[2..10].copy_from_slice(&balance.to_be_bytes());
    p[10..13].copy_from_slice(currency);
    p[13..29].copy_from_slice(txn_id);
    p
}

impl Card {
    /// A new card with its keys, balance, maximum and currency.
    pub fn personalise(
        card_id: [u8; 8],
        keys: Vec<CardKeyEntry>,
        balance: u64,
        max_balance: u64,
        currency: &str,
    ) -> Card {
        Card {
            card_id: hex::encode_upper(card_id),
            keys,
            balance,
            max_balance,
            currency: currency.to_string(),
            pending: None,
            session: None,
        }
    }

    /// Reads a card file.
    pub fn load(path: &Path) -> Result<Card, CardError> {
        let file = |message: String| CardError::File {
            path: path.display().to_string(),
            message,
        };
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| file(e.to_string()))?);
        serde_json::from_str(&text).map_err(|e| file(e.to_string()))
    }

    /// Writes the card file (owner-only permissions).
    pub fn save(&self, path: &Path) -> Result<(), CardError> {
        use std::io::Write;
        #[cfg(unix)]
        use std::os::unix::fs::OpenOptionsExt;
        let file = |message: String| CardError::File {
            path: path.display().to_string(),
            message,
        };
        let text =
            Zeroizing::new(serde_json::to_string_pretty(self).map_err(|e| file(e.to_string()))?);
        let tmp = path.with_extension("tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        options.mode(0o600);
        let mut f = options.open(&tmp).map_err(|e| file(e.to_string()))?;
        f.write_all(text.as_bytes())
            .map_err(|e| file(e.to_string()))?;
        f.sync_all().map_err(|e| file(e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| file(e.to_string()))
    }

    /// CID.
    pub fn cid(&self) -> Result<[u8; 8], CardError> {
        hex_array::<8>(&self.card_id).map(|a| *a)
    }

    /// The newest key version the card holds for `service_code` (what a terminal
    /// reads before authentication starts).
    pub fn key_version(&self, service_code: u16) -> Option<u32> {
        self.keys
            .iter()
            .filter(|k| k.service_code == service_code)
            .map(|k| k.version)
            .max()
    }

    fn key(&self, service_code: u16, version: u32) -> Result<Zeroizing<[u8; 16]>, CardError> {
        let entry = self
            .keys
            .iter()
            .find(|k| k.service_code == service_code && k.version == version)
            .ok_or(CardError::NoKey {
                service_code,
                version,
            })?;
        hex_array::<16>(&entry.key)
    }

    /// Pass 2: draws RA and answers `C1 = CBC_KC(RA || RB)`.
    pub fn answer_challenge(
        &mut self,
        service_code: u16,
        version: u32,
        rb: &[u8; 8],
    ) -> Result<[u8; 16], CardError> {
        let ra: [u8; 8] = rand::random();
        self.answer_challenge_with(service_code, version, rb, ra)
    }

    /// As [`Card::answer_challenge`] with a given RA (to reproduce the vectors).
    pub fn answer_challenge_with(
        &mut self,
        service_code: u16,
        version: u32,
        rb: &[u8; 8],
        mut ra: [u8; 8],
    ) -> Result<[u8; 16], CardError> {
        let kc = self.key(service_code, version)?;
        let mut data = Zeroizing::new([0u8; 16]);
        data[0..8].copy_from_slice(&ra);
        data[8..16].copy_from_slice(rb);
        let c1 = cbc_encrypt(&kc, &data)?;
        self.session = None;
        self.pending = Some(Pending {
            key: hex::encode_upper(kc.as_slice()),
            ra: hex::encode_upper(ra),
            rb: hex::encode_upper(rb),
        });
        ra.zeroize();
        Ok(c1)
    }

    /// Pass 3: accepts the service only if C2 decrypts to RB || RA; then derives K_S.
    pub fn accept_service(&mut self, c2: &[u8; 16]) -> Result<(), CardError> {
        let pending = self.pending.take().ok_or(CardError::NotAuthenticating)?;
        let kc = hex_array::<16>(&pending.key)?;
        let ra = hex_array::<8>(&pending.ra)?;
        let rb = hex_array::<8>(&pending.rb)?;
        let plain = cbc_decrypt(&kc, c2)?;
        let mut expected = Zeroizing::new([0u8; 16]);
        expected[0..8].copy_from_slice(rb.as_slice());
        expected[8..16].copy_from_slice(ra.as_slice());
        if !bool::from(plain.as_slice().ct_eq(expected.as_slice())) {
            return Err(CardError::ServiceNotAuthenticated);
        }
        let ks = session_key(&kc, &ra, &rb)?;
        self.session = Some(Session {
            ks: hex::encode_upper(ks.as_slice()),
            last_counter: None,
        });
        Ok(())
    }

    /// Whether a session is open.
    pub fn in_session(&self) -> bool {
        self.session.is_some()
    }

    /// Processes a sealed command; answers the receipt payload and its MAC. A bad
    /// MAC or counter changes nothing on the card and is answered with its status.
    pub fn process(
        &mut self,
        counter: u32,
        payload: &[u8],
        command_mac: &[u8],
    ) -> Result<([u8; PAYLOAD_LEN], [u8; 8]), CardError> {
        let session = self.session.as_ref().ok_or(CardError::NoSession)?;
        let ks = hex_array::<16>(&session.ks)?;
        let payload: &[u8; PAYLOAD_LEN] = payload
            .try_into()
            .map_err(|_| CardError::Malformed("a command payload is 29 bytes"))?;
        let txn_id: [u8; 16] = payload[13..29]
            .try_into()
            .map_err(|_| CardError::Malformed("txn id"))?;
        let currency: [u8; 3] = self
            .currency
            .as_bytes()
            .try_into()
            .map_err(|_| CardError::Malformed("card currency"))?;
        let expected = mac(&ks, 0x01, counter, payload)?;
        let status = if !bool::from(expected.as_slice().ct_eq(command_mac)) {
            status::BAD_MAC
        } else if session.last_counter.is_some_and(|last| counter <= last) {
            status::BAD_COUNTER
        } else {
            if let Some(s) = self.session.as_mut() {
                s.last_counter = Some(counter);
            }
            self.apply(payload)
        };
        let receipt = receipt_payload(status, self.balance, &currency, &txn_id);
        let receipt_mac = mac(&ks, 0x02, counter, &receipt)?;
        Ok((receipt, receipt_mac))
    }

    fn apply(&mut self, p: &[u8; PAYLOAD_LEN]) -> u8 {
        let amount = p
            .get(2..10)
            .and_then(|a| <[u8; 8]>::try_from(a).ok())
            .map_or(0, u64::from_be_bytes);
        if p[0] != 0x01 || p.get(10..13) != Some(self.currency.as_bytes()) {
            return status::UNSUPPORTED;
        }
        match p[1] {
            0x10 => match self.balance.checked_add(amount) {
                Some(b) if b <= self.max_balance => {
                    self.balance = b;
                    status::OK
                }
                _ => status::LIMIT_EXCEEDED,
            },
            0x20 => match self.balance.checked_sub(amount) {
                Some(b) => {
                    self.balance = b;
                    status::OK
                }
                None => status::INSUFFICIENT_FUNDS,
            },
            0x30 => status::OK,
            _ => status::UNSUPPORTED,
        }
    }
}

#[cfg(test)]
mod tests;
