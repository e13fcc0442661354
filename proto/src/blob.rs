//! The sealed blob: a self-describing container for a value a terminal or shop
//! encrypted under a settlement public key (RSA-OAEP), so that a settlement file
//! names the key alias and version of every line. Layout (integers big-endian):
//!
//! | bytes | field |
//! | --- | --- |
//! | 4 | magic `42 4B 53 31` ("BKS1") |
//! | 1 | alias length L (1 to 64) |
//! | L | alias, ASCII `[a-z0-9._-]` |
//! | 4 | key version (u32, at least 1) |
//! | 1 | OAEP hash: 1 SHA-1 (MGF1-SHA-1), 2 SHA-256 (MGF1-SHA-256); empty label |
//! | 2 | ciphertext length N (u16, 1 to 1024) |
//! | N | the RSA-OAEP ciphertext |
//!
//! Nothing follows. In a settlement file each blob is one line of standard
//! base64 (RFC 4648, with padding). Format only: no cryptography here.

/// The first four bytes of every blob.
pub const MAGIC: [u8; 4] = *b"BKS1";
/// The longest ciphertext (RSA-8192).
pub const MAX_CIPHERTEXT: usize = 1024;

/// A parsed blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedBlob {
    /// The settlement key's alias.
    pub alias: String,
    /// Its version.
    pub version: u32,
    /// 1: SHA-1, 2: SHA-256.
    pub oaep_hash: u8,
    /// The RSA-OAEP ciphertext.
    pub ciphertext: Vec<u8>,
}

/// Why bytes are not a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobError {
    /// Not starting with the magic.
    Magic,
    /// Alias empty, too long or with other characters.
    Alias,
    /// Version 0.
    Version,
    /// Hash code other than 1 or 2.
    Hash,
    /// Ciphertext length 0, above the maximum, or not what follows.
    Length,
}

impl std::fmt::Display for BlobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BlobError::Magic => "not a sealed blob (magic BKS1 missing)",
            BlobError::Alias => "sealed blob: bad alias",
            BlobError::Version => "sealed blob: version 0",
            BlobError::Hash => "sealed blob: unknown OAEP hash",
            BlobError::Length => "sealed blob: bad or truncated ciphertext length",
        })
    }
}

impl std::error::Error for BlobError {}

fn valid_alias(a: &[u8]) -> bool {
    (1..=64).contains(&a.len())
        && a.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

impl SealedBlob {
    /// The blob's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, BlobError> {
        if !valid_alias(self.alias.as_bytes()) {
            return Err(BlobError::Alias);
        }
        if self.version == 0 {
            return Err(BlobError::Version);
        }
        if !matches!(self.oaep_hash, 1 | 2) {
            return Err(BlobError::Hash);
        }
        let n = u16::try_from(self.ciphertext.len())
            .ok()
            .filter(|n| (1..=MAX_CIPHERTEXT as u16).contains(n))
            .ok_or(BlobError::Length)?;
        let alias_len = u8::try_from(self.alias.len()).map_err(|_| BlobError::Alias)?;
        let mut out = Vec::with_capacity(12 + self.alias.len() + self.ciphertext.len());
        out.extend_from_slice(&MAGIC);
        out.push(alias_len);
        out.extend_from_slice(self.alias.as_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        out.push(self.oaep_hash);
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(&self.ciphertext);
        Ok(out)
    }

    /// Parses a blob; every byte must belong to it.
    pub fn decode(bytes: &[u8]) -> Result<SealedBlob, BlobError> {
        let rest = bytes.strip_prefix(&MAGIC).ok_or(BlobError::Magic)?;
        let (&alias_len, rest) = rest.split_first().ok_or(BlobError::Alias)?;
        let (alias, rest) = rest
            .split_at_checked(usize::from(alias_len))
            .ok_or(BlobError::Alias)?;
        if !valid_alias(alias) {
            return Err(BlobError::Alias);
        }
        let (version, rest) = rest.split_first_chunk::<4>().ok_or(BlobError::Version)?;
        let version = u32::from_be_bytes(*version);
        if version == 0 {
            return Err(BlobError::Version);
        }
        let (&oaep_hash, rest) = rest.split_first().ok_or(BlobError::Hash)?;
        if !matches!(oaep_hash, 1 | 2) {
            return Err(BlobError::Hash);
        }
        let (n, ciphertext) = rest.split_first_chunk::<2>().ok_or(BlobError::Length)?;
        let n = usize::from(u16::from_be_bytes(*n));
        if n == 0 || n > MAX_CIPHERTEXT || ciphertext.len() != n {
            return Err(BlobError::Length);
        }
        Ok(SealedBlob {
            alias: String::from_utf8_lossy(alias).into_owned(),
            version,
            oaep_hash,
            ciphertext: ciphertext.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let b = SealedBlob {
            alias: "settle".into(),
            version: 2,
            oaep_hash: 1,
            ciphertext: vec![7; 256],
        };
        let bytes = b.encode().unwrap();
        assert_eq!(&bytes[..11], b"BKS1\x06settle");
        assert_eq!(SealedBlob::decode(&bytes).unwrap(), b);
        assert_eq!(
            SealedBlob::decode(&bytes[..bytes.len() - 1]),
            Err(BlobError::Length)
        );
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(SealedBlob::decode(&extra), Err(BlobError::Length));
        assert_eq!(SealedBlob::decode(b"BKS2"), Err(BlobError::Magic));
        assert_eq!(SealedBlob::decode(b"BKS1\x00"), Err(BlobError::Alias));
        let mut bad_alias = bytes.clone();
        bad_alias[5] = b'S';
        assert_eq!(SealedBlob::decode(&bad_alias), Err(BlobError::Alias));
    }
}
