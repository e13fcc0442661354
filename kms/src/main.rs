//! `kms`: the brandkms server and its host commands.

use std::process::ExitCode;

fn main() -> ExitCode {
    brandkms::commands::main()
}
