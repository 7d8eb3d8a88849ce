//! The `weave-cni` binary: reads `CNI_COMMAND` and stdin, writes the answer of
//! [`weave_cni::handle`] to stdout and exits with its code.

use std::io::{Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let command = std::env::var("CNI_COMMAND").ok();
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        // An unreadable stdin decodes as nothing: VERSION still answers, the rest report it.
        eprintln!("weave-cni: cannot read stdin: {e}");
    }
    let reply = weave_cni::handle(command.as_deref(), &stdin);
    let mut out = std::io::stdout().lock();
    if !reply.stdout.is_empty() && writeln!(out, "{}", reply.stdout).is_err() {
        return ExitCode::FAILURE;
    }
    ExitCode::from(reply.exit_code)
}
