//! `cargo run -p xtask -- assets DIR`: man pages (section 1, one per command and
//! subcommand) and bash, zsh and fish completions for every brandkms binary, as
//! the Debian package installs them (`packaging/build-deb.sh`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use clap_complete::Shell;

/// xtask: build-time assets of brandkms.
#[derive(Debug, Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write man pages into DIR/man/man1 and completions into
    /// DIR/completions/{bash,zsh,fish}.
    Assets {
        /// Output directory (created).
        dir: PathBuf,
    },
}

/// Every binary the package installs, `kms` first.
fn binaries() -> Vec<clap::Command> {
    let mut all = vec![brandkms::commands::command()];
    all.extend(brandkms_clients::commands());
    all
}

/// Where each shell looks for a command's completion file, relative to the
/// assets directory, and the file's name.
fn completion_path(shell: Shell, name: &str) -> PathBuf {
    match shell {
        Shell::Bash => Path::new("completions/bash").join(name),
        Shell::Zsh => Path::new("completions/zsh").join(format!("_{name}")),
        Shell::Fish => Path::new("completions/fish").join(format!("{name}.fish")),
        _ => Path::new("completions/other").join(name),
    }
}

const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

fn write_assets(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let man = dir.join("man/man1");
    std::fs::create_dir_all(&man)?;
    for cmd in binaries() {
        let name = cmd.get_name().to_string();
        clap_mangen::generate_to(cmd.clone(), &man)?;
        written.push(man.join(format!("{name}.1")));
        for shell in SHELLS {
            let path = dir.join(completion_path(shell, &name));
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut file = std::fs::File::create(&path)?;
            clap_complete::generate(shell, &mut cmd.clone(), name.clone(), &mut file);
            written.push(path);
        }
    }
    Ok(written)
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Assets { dir } => match write_assets(&dir) {
            Ok(files) => {
                println!("xtask: {} files under {}", files.len(), dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("xtask: error: {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const NAMES: [&str; 8] = [
        "kms",
        "kmsctl",
        "issuer",
        "cybershop",
        "loading-portal",
        "loadgen",
        "terminal",
        "clearing",
    ];

    #[test]
    fn every_binary_has_a_man_page_and_completions() {
        let dir = tempfile::tempdir().unwrap();
        write_assets(dir.path()).unwrap();
        for name in NAMES {
            let page =
                std::fs::read_to_string(dir.path().join(format!("man/man1/{name}.1"))).unwrap();
            assert!(page.contains(".TH"), "{name}.1 is a man page");
            let roff_name = name.replace('-', "\\-");
            assert!(
                page.contains(&format!("{roff_name} \\-")),
                "{name}.1 names {name}: {page}"
            );
            for shell in SHELLS {
                let text =
                    std::fs::read_to_string(dir.path().join(completion_path(shell, name))).unwrap();
                assert!(text.contains(name), "{shell} completion of {name}");
            }
        }
        // Subcommands have pages of their own.
        assert!(dir.path().join("man/man1/kmsctl-key-import.1").is_file());
        assert!(dir.path().join("man/man1/kms-serve.1").is_file());
        // Completions know the enum values.
        let bash = std::fs::read_to_string(dir.path().join("completions/bash/kmsctl")).unwrap();
        assert!(
            bash.contains("card_access") && bash.contains("import_kek"),
            "{bash}"
        );
    }

    /// Every binary's `--help` opens with its own name and what it is, not the
    /// crate's description.
    #[test]
    fn every_binary_says_what_it_is() {
        let all = binaries();
        assert_eq!(all.iter().map(|c| c.get_name()).collect::<Vec<_>>(), NAMES);
        let crate_descriptions = [
            "brandkms client SDK, kmsctl, participant commands and the card simulator",
            "brandkms: the central key service of an electronic-money brand",
        ];
        for cmd in all {
            let about = cmd.get_about().map(|a| a.to_string()).unwrap_or_default();
            assert!(
                about.starts_with(&format!("{}: ", cmd.get_name())),
                "{}: {about}",
                cmd.get_name()
            );
            assert!(!crate_descriptions.contains(&about.as_str()), "{about}");
        }
    }

    /// Every argument whose value is one of a fixed set lists the set: a value
    /// documented as "`a` or `b`" is a `ValueEnum`, so `--help` and the
    /// completions show the values.
    #[test]
    fn fixed_value_sets_are_listed() {
        fn walk(cmd: &clap::Command, path: &str, found: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
                if takes_value
                    && arg.get_possible_values().is_empty()
                    && help.contains(" or ")
                    && help.matches('`').count() >= 4
                {
                    found.push(format!("{path} --{}: {help}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), found);
            }
        }
        let mut found = Vec::new();
        for cmd in binaries() {
            let cmd = cmd.clone();
            walk(&cmd, cmd.get_name(), &mut found);
        }
        assert!(found.is_empty(), "{found:#?}");
    }
}
