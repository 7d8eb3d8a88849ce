//! Running code inside another network namespace.
//!
//! A network namespace belongs to a thread, not to the process: `setns(CLONE_NEWNET)` moves
//! only the calling thread, and sockets, TAP queues and netlink connections opened on that
//! thread stay in that namespace for their whole life, wherever they are used afterwards.
//! [`run_in_netns`] uses a dedicated thread so that the caller's own thread never moves.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::thread;

use super::{cvt, SysError};

/// Where `ip netns add NAME` leaves the namespace's bind mount.
pub const NETNS_RUN_DIR: &str = "/var/run/netns";

/// Runs `f` on a new thread that has entered the named namespace (`/var/run/netns/NAME`)
/// and returns its result. A panic in `f` is resumed on the calling thread.
pub fn run_in_netns<T, F>(name: &str, f: F) -> Result<T, SysError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let path = netns_path(name)?;
    run_in_netns_path(&path, f)
}

/// Same as [`run_in_netns`], for a namespace file given by path (e.g. `/proc/PID/ns/net`).
pub fn run_in_netns_path<T, F>(path: &Path, f: F) -> Result<T, SysError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let joined = thread::scope(|scope| {
        thread::Builder::new()
            .name("netns".to_owned())
            .spawn_scoped(scope, || {
                enter_netns_path(path)?;
                Ok(f())
            })
            .map_err(|source| SysError::Syscall {
                call: "spawn thread",
                target: path.display().to_string(),
                source,
            })
            .map(|handle| handle.join())
    })?;
    match joined {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Moves the calling thread into the named namespace, for threads that live there for
/// good (a worker started by a test harness). Its other threads stay where they are.
pub fn enter_netns(name: &str) -> Result<(), SysError> {
    enter_netns_path(&netns_path(name)?)
}

/// Same as [`enter_netns`], for a namespace file given by path.
pub fn enter_netns_path(path: &Path) -> Result<(), SysError> {
    let target = path.display().to_string();
    let file = File::open(path).map_err(|source| SysError::Syscall {
        call: "open",
        target: target.clone(),
        source,
    })?;
    // SAFETY: setns takes a descriptor and a flag; `file` stays open for the call.
    let ret = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    cvt(ret).map_err(|source| SysError::Syscall {
        call: "setns",
        target,
        source,
    })?;
    Ok(())
}

/// The bind-mount path of a named namespace, refusing names that would leave the directory.
pub fn netns_path(name: &str) -> Result<PathBuf, SysError> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0');
    if !ok {
        return Err(SysError::BadNetnsName(name.to_owned()));
    }
    Ok(Path::new(NETNS_RUN_DIR).join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_in_the_netns_directory() {
        assert_eq!(
            netns_path("host-a").expect("valid"),
            PathBuf::from("/var/run/netns/host-a")
        );
        for bad in ["", ".", "..", "../etc", "a/b", "a\0"] {
            assert!(
                matches!(netns_path(bad), Err(SysError::BadNetnsName(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn a_missing_namespace_is_an_error_naming_it() {
        let err = run_in_netns("weave-router-no-such-netns", || ()).expect_err("missing");
        assert!(
            err.to_string().contains("weave-router-no-such-netns"),
            "{err}"
        );
    }

    #[test]
    fn own_namespace_runs_the_closure_and_passes_borrows() {
        // Entering the namespace we are already in needs CAP_SYS_ADMIN; without it the
        // error must be a clean EPERM rather than a panic.
        let mut seen = 0;
        match run_in_netns_path(Path::new("/proc/self/ns/net"), || {
            seen += 1;
            7
        }) {
            Ok(v) => {
                assert_eq!(v, 7);
                assert_eq!(seen, 1);
            }
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}"),
        }
    }
}
