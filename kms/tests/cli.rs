//! The `kms` binary: start-up failures name their cause, `init` is idempotent, and
//! a SIGKILL between object creation and row commit leaves exactly the orphan that
//! `kms reconcile` reports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use brandkms::commands::softhsm::{TokenDir, create_token};
use brandkms::testing::{TEST_PIN, TEST_SO_PIN, TEST_TOKEN_LABEL};

const KMS: &str = env!("CARGO_BIN_EXE_kms");

/// A deployment with a token of its own (children select it with SOFTHSM2_CONF),
/// so that tests running side by side never see each other's objects.
struct Deployment {
    dir: tempfile::TempDir,
    token: TokenDir,
}

impl Deployment {
    /// A config on the process's test token with a SQLite file of its own.
    fn new() -> Deployment {
        Self::with(|c| c)
    }

    fn with(edit: impl FnOnce(String) -> String) -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        let token = create_token(
            &dir.path().join("token"),
            TEST_TOKEN_LABEL,
            TEST_SO_PIN,
            TEST_PIN,
        )
        .expect("create a token");
        let config = format!(
            "[hsm]\nmodule = \"{}\"\ntoken_label = \"{TEST_TOKEN_LABEL}\"\npin_env = \"TEST_KMS_PIN\"\n\
             [database]\nurl = \"sqlite://kms.db\"\n",
            token.module.display()
        );
        std::fs::write(dir.path().join("kms.toml"), edit(config)).unwrap();
        Deployment { dir, token }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("kms.toml")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(KMS);
        cmd.args(args)
            .arg("--config")
            .arg(self.config())
            .env("TEST_KMS_PIN", TEST_PIN)
            .env("RUST_LOG", "warn");
        cmd.env("SOFTHSM2_CONF", &self.token.softhsm2_conf)
            .env("OPENSSL_CONF", &self.token.openssl_conf);
        cmd
    }

    /// The CKA_ID (hex) of the object with this label, as pkcs11-tool lists it.
    fn object_id(&self, label: &str) -> String {
        let out = Command::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", &self.token.softhsm2_conf)
            .args(["--module", &self.token.module.display().to_string()])
            .args([
                "--token-label",
                TEST_TOKEN_LABEL,
                "--login",
                "--pin",
                TEST_PIN,
            ])
            .arg("--list-objects")
            .output()
            .unwrap();
        let listing = text(&out.stdout);
        let mut lines = listing
            .lines()
            .skip_while(|l| !l.contains(&format!("label:      {label}")));
        lines
            .find_map(|l| l.trim().strip_prefix("ID:").map(|id| id.trim().to_string()))
            .unwrap_or_else(|| panic!("{label} not in {listing}"))
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn assert_fails_naming(out: &Output, needle: &str) {
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "should fail: {stderr}");
    assert!(
        stderr.contains(needle),
        "stderr should name {needle:?}: {stderr}"
    );
}

#[test]
fn init_is_idempotent_and_reconcile_finds_nothing() {
    let d = Deployment::new();
    let first = d.run(&["init", "--officer", "officer-1"]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let out = text(&first.stdout);
    assert!(
        out.contains("created internal key brandkms.audit-mac v1"),
        "{out}"
    );
    assert!(
        out.contains("created internal key brandkms.session-seal v1"),
        "{out}"
    );
    assert!(out.contains("registered officer officer-1"), "{out}");

    let second = d.run(&["init", "--officer", "officer-1"]);
    assert!(second.status.success());
    assert!(
        text(&second.stdout).contains("nothing to do"),
        "{}",
        text(&second.stdout)
    );

    let rec = d.run(&["reconcile"]);
    assert!(rec.status.success(), "{}", text(&rec.stdout));
    assert!(text(&rec.stdout).contains("consistent"));

    // An object deleted behind brandkms's back is reported as missing.
    let seal_id = d.object_id("brandkms/brandkms.session-seal/v1");
    let deleted = Command::new("pkcs11-tool")
        .env("SOFTHSM2_CONF", &d.token.softhsm2_conf)
        .args(["--module", &d.token.module.display().to_string()])
        .args([
            "--token-label",
            TEST_TOKEN_LABEL,
            "--login",
            "--pin",
            TEST_PIN,
        ])
        .args(["--delete-object", "--type", "secrkey", "--id", &seal_id])
        .output()
        .unwrap();
    assert!(deleted.status.success(), "{}", text(&deleted.stderr));
    let rec = d.run(&["reconcile"]);
    let out = text(&rec.stdout);
    assert!(!rec.status.success());
    assert!(
        out.contains(&format!("missing object (row without object): brandkms.session-seal v1 state=active cka_id={seal_id}")),
        "{out}"
    );
}

#[test]
fn a_sigkill_between_object_and_row_leaves_exactly_the_orphan_reconcile_reports() {
    let d = Deployment::new();
    let mut child = d
        .command(&["init"])
        .env("BRANDKMS_FAILPOINT", "key-object-created")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let reached = lines.any(|l| {
        l.unwrap_or_default()
            .contains("failpoint key-object-created reached")
    });
    assert!(reached, "the failpoint must be reached");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let rec = d.run(&["reconcile"]);
    let out = text(&rec.stdout);
    assert!(
        !rec.status.success(),
        "an orphan is an inconsistency: {out}"
    );
    let orphans: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("orphan object"))
        .collect();
    assert_eq!(orphans.len(), 1, "{out}");
    assert!(
        orphans[0].contains("label=brandkms/brandkms.audit-mac/v1"),
        "{out}"
    );
    assert!(!out.contains("missing object"), "{out}");

    // Without a terminal and without --yes, --fix refuses to destroy anything.
    let refused = d
        .command(&["reconcile", "--fix"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_fails_naming(&refused, "--yes");

    let fixed = d.run(&["reconcile", "--fix", "--yes"]);
    assert!(
        text(&fixed.stdout).contains("destroyed orphan object"),
        "{}",
        text(&fixed.stdout)
    );
    let rec = d.run(&["reconcile"]);
    assert!(rec.status.success(), "{}", text(&rec.stdout));

    // Initialisation then completes normally.
    let init = d.run(&["init"]);
    assert!(init.status.success(), "{}", text(&init.stderr));
    assert!(d.run(&["reconcile"]).status.success());
}

#[test]
fn a_missing_module_is_named() {
    let d = Deployment::with(|c| {
        let module = brandkms::commands::softhsm::module_path()
            .unwrap()
            .display()
            .to_string();
        c.replace(&module, "/usr/lib/nothing/libnone.so")
    });
    assert_fails_naming(&d.run(&["doctor"]), "hsm.module");
}

/// Issue 12, item 4: the hardening report, probed on SoftHSM2 2.6.1 with
/// throwaway objects: wrap-with-trusted enforced and trusted keys out of a
/// PIN holder's reach; non-sensitive derivation accepted and no derive
/// templates (what docs/threat-model.md says stays open on this module).
#[test]
fn doctor_reports_what_a_pin_holder_could_do() {
    let d = Deployment::new();
    let out = d.run(&["doctor"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    for line in [
        "closed       an untrusted key cannot wrap a key marked CKA_WRAP_WITH_TRUSTED: enforced (CKR_KEY_NOT_WRAPPABLE)",
        "closed       a PIN holder cannot mark its own key CKA_TRUSTED: refused (CKR_ATTRIBUTE_READ_ONLY)",
        "OPEN         a key derived from a card master cannot be made readable (non-sensitive): ACCEPTED",
        "OPEN         the module knows CKA_DERIVE_TEMPLATE (derived keys' attributes pinned by the master): no (CKR_ATTRIBUTE_TYPE_INVALID)",
    ] {
        assert!(report.contains(line), "{line:?} not in:\n{report}");
    }
}

/// Issue 13, item 7: what SoftHSM2 2.6.1 offers for bringing existing keys in:
/// RSA-OAEP and AES key wrap with padding unwrap; no CBC unwrap (so no TR-31 /
/// X9.143 key blocks) and no XOR or concatenation derivation (so no import by
/// clear components) without the key passing through the service's memory.
#[test]
fn doctor_reports_what_the_module_offers_for_key_import() {
    let d = Deployment::new();
    let out = d.run(&["doctor"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    for line in [
        "ok           RSA-OAEP unwrap (import under an import key)",
        "ok           AES key wrap with padding unwrap (bulk import under a KEK)",
        "unavailable  TDES-CBC unwrap (TR-31 / X9.143 key blocks): the token refuses the mechanism for C_UnwrapKey",
        "unavailable  AES-CBC unwrap (TR-31 / X9.143 key blocks): the token refuses the mechanism for C_UnwrapKey",
        "unavailable  CKM_XOR_BASE_AND_DATA (import by clear components): not in the token's mechanism list",
        "unavailable  CKM_CONCATENATE_BASE_AND_KEY (components, key blocks): not in the token's mechanism list",
        "unavailable  CKM_CONCATENATE_BASE_AND_DATA (components, key blocks): not in the token's mechanism list",
    ] {
        assert!(report.contains(line), "{line:?} not in:\n{report}");
    }
}

#[test]
fn a_wrong_token_label_is_named() {
    let d = Deployment::with(|c| c.replace(TEST_TOKEN_LABEL, "no-such-token"));
    let out = d.run(&["doctor"]);
    assert_fails_naming(&out, "no token labelled \"no-such-token\"");
    assert_fails_naming(&out, TEST_TOKEN_LABEL); // lists the tokens present
}

#[test]
fn a_wrong_pin_is_named() {
    let d = Deployment::new();
    let out = d
        .command(&["doctor"])
        .env("TEST_KMS_PIN", "wrong-pin")
        .output()
        .unwrap();
    assert_fails_naming(&out, "refused the PIN");
}

#[test]
fn a_missing_pin_is_named() {
    let d = Deployment::new();
    let out = d
        .command(&["doctor"])
        .env_remove("TEST_KMS_PIN")
        .output()
        .unwrap();
    assert_fails_naming(&out, "hsm.pin_env");
}

#[test]
fn an_unreadable_pin_file_is_named() {
    let d = Deployment::with(|c| c.replace("pin_env = \"TEST_KMS_PIN\"", "pin_file = \"pin-dir\""));
    std::fs::create_dir(d.dir.path().join("pin-dir")).unwrap();
    let out = d.run(&["doctor"]);
    assert_fails_naming(&out, "hsm.pin_file");
    assert_fails_naming(&out, "cannot read PIN file");
}

#[test]
fn a_pin_file_open_to_others_is_refused_and_the_database_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let d = Deployment::with(|c| c.replace("pin_env = \"TEST_KMS_PIN\"", "pin_file = \"pin\""));
    let pin = d.dir.path().join("pin");
    std::fs::write(&pin, TEST_PIN).unwrap();
    std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = d.run(&["init", "--officer", "officer-1"]);
    assert_fails_naming(&out, "chmod 600");
    assert!(
        !text(&out.stderr).contains(TEST_PIN),
        "the PIN is never printed"
    );
    assert!(!d.dir.path().join("kms.db").exists(), "nothing was created");

    std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = d.run(&["init", "--officer", "officer-1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for file in ["kms.db", "kms.db-wal", "kms.db-shm"] {
        let path = d.dir.path().join(file);
        if let Ok(meta) = std::fs::metadata(&path) {
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{file}");
        } else {
            assert_ne!(file, "kms.db", "kms.db exists");
        }
    }
}

#[test]
fn a_bad_database_url_is_named() {
    let d = Deployment::with(|c| c.replace("sqlite://kms.db", "mysql://db/kms"));
    assert_fails_naming(&d.run(&["doctor"]), "database.url");
    // A well-formed URL whose server is not there.
    let d =
        Deployment::with(|c| c.replace("sqlite://kms.db", "postgres://kms:secret@127.0.0.1:1/kms"));
    let out = d.run(&["doctor"]);
    assert_fails_naming(
        &out,
        "cannot connect to database postgres://kms:***@127.0.0.1:1/kms",
    );
    assert!(
        !text(&out.stderr).contains("secret"),
        "the password must not be printed"
    );
}

#[test]
fn a_pin_in_the_config_file_is_refused() {
    let d = Deployment::with(|c| c.replace("pin_env = \"TEST_KMS_PIN\"", "pin = \"1234\""));
    assert_fails_naming(&d.run(&["doctor"]), "hsm.pin");
}

#[test]
fn a_missing_config_file_is_named() {
    let out = Command::new(KMS)
        .args(["doctor", "--config", "/nonexistent/kms.toml"])
        .output()
        .unwrap();
    assert_fails_naming(&out, "/nonexistent/kms.toml");
}

#[test]
fn without_the_legacy_provider_single_des_gives_a_clear_error() {
    let d = Deployment::new();
    let cnf = d.dir.path().join("no-legacy.cnf");
    std::fs::write(
        &cnf,
        "openssl_conf = init\n[init]\nproviders = prov\n[prov]\ndefault = dflt\n[dflt]\nactivate = 1\n",
    )
    .unwrap();
    let out = d
        .command(&["doctor"])
        .env("OPENSSL_CONF", &cnf)
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("ok           TDES card-key derivation and CMAC"),
        "{stdout}"
    );
    let line = stdout
        .lines()
        .find(|l| l.contains("single DES"))
        .unwrap_or_default();
    assert!(line.starts_with("unavailable"), "{stdout}");
    assert!(line.contains("legacy provider"), "{line}");

    // With the test token's own OPENSSL_CONF (legacy active) it works.
    let out = d.run(&["doctor"]);
    assert!(text(&out.stdout).contains("ok           single DES card-key derivation (legacy)"));
}

/// Issue 14, item 2: `--log-format json` writes one JSON object per line; text
/// logs written to a pipe carry no colour escapes.
#[test]
fn logs_are_json_on_request_and_plain_text_in_a_pipe() {
    let logged =
        |d: &Deployment, args: &[&str]| d.command(args).env("RUST_LOG", "info").output().unwrap();
    let json = logged(
        &Deployment::new(),
        &["--log-format", "json", "init", "--officer", "officer-1"],
    );
    assert!(json.status.success(), "{}", text(&json.stderr));
    let lines: Vec<String> = text(&json.stderr).lines().map(str::to_string).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
    }
    assert!(
        lines.iter().any(|l| l.contains("audit chain started")),
        "{lines:?}"
    );
    let plain = logged(&Deployment::new(), &["init", "--officer", "officer-1"]);
    assert!(plain.status.success());
    let stderr = text(&plain.stderr);
    assert!(stderr.contains("audit chain started"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "ANSI escapes in a pipe: {stderr:?}"
    );
}

/// Issue 14, item 5: the module, the token and the PIN source selected by one
/// PKCS#11 URI (RFC 7512) in `hsm.uri`, instead of the separate fields.
#[test]
fn a_pkcs11_uri_selects_the_module_token_and_pin_file() {
    use std::os::unix::fs::PermissionsExt;
    let d = Deployment::with(|c| {
        let module = c
            .lines()
            .find_map(|l| l.strip_prefix("module = "))
            .unwrap()
            .trim_matches('"')
            .to_string();
        let uri = format!(
            "pkcs11:token={}?module-path={module}&pin-source=file:pin",
            TEST_TOKEN_LABEL.replace(' ', "%20")
        );
        c.lines()
            .filter(|l| {
                !l.starts_with("module =")
                    && !l.starts_with("token_label =")
                    && !l.starts_with("pin_env =")
            })
            .map(|l| {
                if l == "[hsm]" {
                    format!("[hsm]\nuri = \"{uri}\"\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect()
    });
    let pin = d.dir.path().join("pin");
    std::fs::write(&pin, TEST_PIN).unwrap();
    std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = std::fs::read_to_string(d.config()).unwrap();
    assert!(
        config.contains("uri = \"pkcs11:token=") && !config.contains("token_label"),
        "{config}"
    );
    let out = d
        .command(&["init"])
        .env_remove("TEST_KMS_PIN")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("created internal key brandkms.audit-mac v1"),
        "{}",
        text(&out.stdout)
    );

    // A PIN in the URI is refused before anything is opened, and not echoed.
    std::fs::write(
        d.config(),
        config.replace("pin-source=file:pin", "pin-value=123456"),
    )
    .unwrap();
    let refused = d.run(&["doctor"]);
    assert_fails_naming(&refused, "hsm.uri: pin-value");
    assert!(!text(&refused.stderr).contains("123456"));
}
