//! The `weave-cni` binary (installed as `weave-net`): a CNI plugin when a runtime calls it,
//! with `CNI_COMMAND` in the environment and the configuration on stdin; `weave-cni install`
//! and `weave-cni uninstall` for the DaemonSet's init container.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use weave_cni::install;

const USAGE: &str = "usage: weave-cni install [--bin-dir DIR] [--conf-dir DIR]
       weave-cni uninstall [--bin-dir DIR]
  (defaults: $CNI_BIN_DIR or /opt/cni/bin, $CNI_CONF_DIR or /etc/cni/net.d)
Called with CNI_COMMAND set, it is the CNI plugin.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(verb) = args.first() {
        if std::env::var_os("CNI_COMMAND").is_none() {
            return admin(verb, &args[1..]);
        }
    }
    let vars: BTreeMap<String, String> = std::env::vars().collect();
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        // An unreadable stdin decodes as nothing: VERSION still answers, the rest report it.
        eprintln!("weave-cni: cannot read stdin: {e}");
    }
    let reply = weave_cni::run(&vars, &stdin);
    let mut out = std::io::stdout().lock();
    if !reply.stdout.is_empty() && writeln!(out, "{}", reply.stdout).is_err() {
        return ExitCode::FAILURE;
    }
    ExitCode::from(reply.exit_code)
}

fn admin(verb: &str, rest: &[String]) -> ExitCode {
    let mut bin_dir = dir_from_env("CNI_BIN_DIR", "/opt/cni/bin");
    let mut conf_dir = dir_from_env("CNI_CONF_DIR", "/etc/cni/net.d");
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let slot = match flag.as_str() {
            "--bin-dir" => &mut bin_dir,
            "--conf-dir" => &mut conf_dir,
            _ => return usage(&format!("unknown argument {flag:?}")),
        };
        match it.next() {
            Some(v) if !v.is_empty() => *slot = PathBuf::from(v),
            _ => return usage(&format!("{flag} needs a directory")),
        }
    }
    let outcome = match verb {
        "install" => {
            std::env::current_exe().and_then(|me| install::install(&me, &bin_dir, &conf_dir))
        }
        "uninstall" => install::uninstall(&bin_dir),
        _ => return usage(&format!("unknown command {verb:?}")),
    };
    match outcome {
        Ok(paths) => {
            for p in paths {
                println!("weave-cni {verb}: {}", p.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weave-cni {verb}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn dir_from_env(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("weave-cni: {problem}\n{USAGE}");
    ExitCode::from(2)
}
