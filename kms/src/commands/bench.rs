//! `kms bench`: the raw PKCS#11 rate of the token operations one whole card
//! transaction costs the service (begin, complete, seal, verify receipt), with
//! no gRPC, TLS or database: the ceiling the load generator's rate is compared
//! with. Runs on ephemeral session objects; leaves nothing in the token.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::hsm::{
    EcbDerive, Exportability, Hsm, HsmError, HsmSession, KeyRole, KeySpec, ObjectId,
    SecretAlgorithm,
};
use crate::ops::card_protocol::{self as card, CardKey, FROM_CARD, Op, TO_CARD};

/// Token operations per card transaction, as the service performs them.
pub const OPERATIONS: &str = "RB; derive K_C, CBC-decrypt C1, CBC-encrypt C2, GCM-seal RA||RB; \
     txn id, GCM-open, derive K_C and K_S, CMAC; GCM-open, derive K_C and K_S, CMAC verify; \
     4 audit HMAC-SHA-256";

/// What a run measured.
#[derive(Clone, Copy, Debug)]
pub struct BenchReport {
    /// Whole transactions' token work completed.
    pub transactions: u64,
    /// Seconds measured.
    pub seconds: f64,
    /// Concurrent workers.
    pub threads: usize,
}

impl BenchReport {
    /// Transactions per second.
    pub fn rate(&self) -> f64 {
        self.transactions as f64 / self.seconds
    }
}

#[derive(Clone, Copy)]
struct Keys {
    master: ObjectId,
    seal: ObjectId,
    audit: ObjectId,
}

fn spec(algorithm: SecretAlgorithm, role: KeyRole) -> KeySpec {
    KeySpec {
        algorithm,
        role,
        export: Exportability::Never,
    }
}

const BENCH_CID: [u8; 8] = *b"benchcid";
const BENCH_RA: [u8; 8] = *b"bench-ra";
const BENCH_RB: [u8; 8] = *b"bench-rb";
const BENCH_SESSION: &str = "cs-bench";

/// A card's C1 for the bench key, made once (it is the card's work, not the
/// service's).
fn card_c1(s: &HsmSession<'_>, k: Keys) -> Result<[u8; 16], HsmError> {
    let kc = s.derive_card_key(&k.master, EcbDerive::Des3, &card::card_key_data(&BENCH_CID))?;
    let c1 = s.tdes_cbc_encrypt(
        kc.handle(),
        [0u8; 8],
        card::join(&BENCH_RA, &BENCH_RB).as_slice(),
    )?;
    c1.try_into()
        .map_err(|_| HsmError::InvalidInput("bench: C1 is not 16 bytes"))
}

/// One transaction's token operations, the very calls the service makes.
fn transaction(s: &HsmSession<'_>, k: Keys, c1: &[u8; 16]) -> Result<(), HsmError> {
    let key = CardKey {
        master: k.master,
        derive: EcbDerive::Des3,
        cid: BENCH_CID,
    };
    // Begin: RB (the card answered the fixed one).
    s.random(8)?;
    // Complete.
    let done = card::complete(s, &key, &BENCH_RB, c1, &k.seal, BENCH_SESSION)?
        .ok_or(HsmError::InvalidInput("bench: C1 did not verify"))?;
    // Seal.
    let (ra, rb) = card::unseal_nonces(s, &k.seal, BENCH_SESSION, &done.sealed)?;
    let txn: [u8; 16] = s.random(16)?.try_into().unwrap_or([0u8; 16]);
    let payload = card::command_payload(Op::Debit, 100, b"JPY", &txn);
    let mac = card::mac(s, &key, &ra, &rb, &card::mac_input(TO_CARD, 0, &payload))?;
    // Verify the receipt (the command's MAC stands in for the card's).
    let (ra, rb) = card::unseal_nonces(s, &k.seal, BENCH_SESSION, &done.sealed)?;
    card::verify_mac(
        s,
        &key,
        &ra,
        &rb,
        &card::mac_input(FROM_CARD, 0, &payload),
        &mac,
    )?;
    // One audit record per call.
    for _ in 0..4 {
        s.hmac_sha256(&k.audit, &payload)?;
    }
    Ok(())
}

/// Runs `threads` workers, each calling `op(s, n)` in the token with a growing
/// `n` until `duration` has passed; counts the calls that completed.
async fn measure<F>(
    hsm: &Hsm,
    threads: usize,
    duration: Duration,
    op: F,
) -> Result<BenchReport, HsmError>
where
    F: Fn(&HsmSession<'_>, u64) -> Result<(), HsmError> + Send + Sync + Clone + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..threads {
        let (hsm, stop, done, op) = (
            hsm.clone(),
            Arc::clone(&stop),
            Arc::clone(&done),
            op.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut n = (w as u64) << 40;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let op = op.clone();
                hsm.run_long(move |s| op(s, n)).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), HsmError>(())
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut result = Ok(());
    for w in workers {
        match w.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(e) => result = Err(HsmError::Worker(e.to_string())),
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    result.map(|()| BenchReport {
        transactions: done.load(Ordering::Relaxed),
        seconds,
        threads,
    })
}

/// Runs `threads` workers for `duration` on the token.
pub async fn run(hsm: &Hsm, threads: usize, duration: Duration) -> Result<BenchReport, HsmError> {
    let keys = hsm
        .run(|s| {
            Ok(Keys {
                master: s.generate_ephemeral(&spec(SecretAlgorithm::Tdes2, KeyRole::CardMaster))?,
                seal: s.generate_ephemeral(&spec(SecretAlgorithm::Aes256, KeyRole::SessionSeal))?,
                audit: s
                    .generate_ephemeral(&spec(SecretAlgorithm::HmacSha256, KeyRole::AuditMac))?,
            })
        })
        .await?;
    let c1 = hsm.run(move |s| card_c1(s, keys)).await?;
    // Warm up (handle caches), then measure.
    hsm.run(move |s| transaction(s, keys, &c1)).await?;
    let report = measure(hsm, threads, duration, move |s, _| {
        transaction(s, keys, &c1)
    })
    .await;
    hsm.run(move |s| {
        for id in [keys.master, keys.seal, keys.audit] {
            s.destroy(&id)?;
        }
        Ok(())
    })
    .await?;
    report
}

/// Runs `threads` workers decrypting one RSA-OAEP ciphertext over and over with
/// an ephemeral key of `bits` in the token, for `duration`: the raw rate the
/// `clearing decrypt` benchmark compares with.
pub async fn run_oaep(
    hsm: &Hsm,
    threads: usize,
    duration: Duration,
    bits: u64,
    hash: crate::hsm::OaepHash,
) -> Result<BenchReport, HsmError> {
    let (id, ciphertext) = hsm.run(move |s| s.rsa_bench_pair(bits, hash)).await?;
    let ciphertext = Arc::new(ciphertext);
    let report = measure(hsm, threads, duration, move |s, _| {
        s.rsa_oaep_decrypt(&id, hash, &ciphertext).map(|_| ())
    })
    .await;
    hsm.run(move |s| s.destroy(&id)).await?;
    report
}
