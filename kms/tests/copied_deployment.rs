//! Issue 14, item 6: a development deployment can be copied. `kms init --dev`
//! writes SoftHSM2's token directory relative to the deployment and `kms` runs
//! in its config file's directory, so a `cp -a` of a deployment has a token of
//! its own: with the original deleted, the copy still logs in, finds its
//! internal keys and reconciles clean. `kms doctor` warns when the token
//! directory lies outside the deployment (the layout written before).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::process::{Command, Output};

const KMS: &str = env!("CARGO_BIN_EXE_kms");

/// `kms ARGS... --config CONFIG` (or `kms ARGS... DIR` for `init --dev`),
/// which must succeed.
fn kms(args: &[&str], config: &Path) -> Output {
    let mut cmd = Command::new(KMS);
    cmd.args(args);
    if args != ["init", "--dev"] {
        cmd.arg("--config");
    }
    let out = cmd
        .arg(config)
        .env("RUST_LOG", "warn")
        .env_remove("SOFTHSM2_CONF")
        .env_remove("OPENSSL_CONF")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kms {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn copy(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_copied_deployment_has_a_token_of_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let original = tmp.path().join("original");
    kms(&["init", "--dev"], &original);
    let conf = std::fs::read_to_string(original.join("softhsm/softhsm2.conf")).unwrap();
    assert!(
        conf.contains("directories.tokendir = softhsm/tokens\n"),
        "{conf}"
    );

    let copied = tmp.path().join("copy");
    copy(&original, &copied);
    let config = copied.join("kms.toml");
    let doctor = stdout(&kms(&["doctor"], &config));
    assert!(
        doctor.contains("ok           token directory inside the deployment"),
        "{doctor}"
    );

    // Without the original, the copy still has its token and its keys.
    std::fs::remove_dir_all(&original).unwrap();
    let again = stdout(&kms(&["init"], &config));
    assert!(again.contains("nothing to do"), "{again}");
    let reconcile = stdout(&kms(&["reconcile"], &config));
    assert!(
        reconcile.contains("2 brandkms objects") && reconcile.contains("consistent"),
        "{reconcile}"
    );

    // The layout written before: an absolute token directory, here another
    // deployment's. Doctor warns, naming it.
    let other = tmp.path().join("other");
    copy(&copied, &other);
    let elsewhere = other.join("softhsm/tokens").canonicalize().unwrap();
    std::fs::write(
        copied.join("softhsm/softhsm2.conf"),
        conf.replace(
            "directories.tokendir = softhsm/tokens",
            &format!("directories.tokendir = {}", elsewhere.display()),
        ),
    )
    .unwrap();
    let doctor = stdout(&kms(&["doctor"], &config));
    assert!(
        doctor.contains(&format!(
            "WARNING: {} lies outside the deployment",
            elsewhere.display()
        )),
        "{doctor}"
    );
}
