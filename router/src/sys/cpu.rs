//! CPU affinity for data-plane workers.

use std::mem::size_of;

use super::{cvt, SysError};

/// Number of CPUs a `cpu_set_t` holds.
pub const MAX_CPUS: usize = 8 * size_of::<libc::cpu_set_t>();

/// Pins the calling thread to one CPU (`sched_setaffinity(0, ..)`).
pub fn pin_current_thread(cpu: usize) -> Result<(), SysError> {
    if cpu >= MAX_CPUS {
        return Err(SysError::CpuOutOfRange {
            cpu,
            max: MAX_CPUS - 1,
        });
    }
    // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` was checked to be inside the set just above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: the pointer and size describe `set`; pid 0 is the calling thread.
    let ret = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) };
    cvt(ret).map_err(|source| SysError::Syscall {
        call: "sched_setaffinity",
        target: format!("cpu {cpu}"),
        source,
    })?;
    Ok(())
}

/// The CPUs the calling thread may run on, in increasing order; one worker per entry.
pub fn allowed_cpus() -> Result<Vec<usize>, SysError> {
    // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer and size describe `set`, which the kernel fills.
    let ret = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut set) };
    cvt(ret).map_err(|source| SysError::Syscall {
        call: "sched_getaffinity",
        target: "calling thread".to_owned(),
        source,
    })?;
    Ok((0..MAX_CPUS)
        // SAFETY: every index is below MAX_CPUS, inside the set.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_cpu_is_refused() {
        assert!(matches!(
            pin_current_thread(MAX_CPUS),
            Err(SysError::CpuOutOfRange { .. })
        ));
    }

    #[test]
    fn pinning_a_thread_narrows_its_allowed_set() {
        let before = allowed_cpus().expect("affinity");
        let &last = before.last().expect("at least one cpu");
        // A separate thread, so the test harness's thread keeps its affinity.
        let after = std::thread::spawn(move || {
            pin_current_thread(last).expect("pin");
            allowed_cpus().expect("affinity")
        })
        .join()
        .expect("thread");
        assert_eq!(after, vec![last]);
        assert_eq!(allowed_cpus().expect("affinity"), before);
    }
}
