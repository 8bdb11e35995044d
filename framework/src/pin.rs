//! Pinning vCPU threads to host CPUs, so that a measurement is not moved around by the host
//! scheduler (a migration empties the caches and the branch predictors the vCPU had warmed).
//!
//! # API
//!
//! ```text
//! let plan = pin::plan(nr_vcpus)?;        // from the process's allowed CPUs (sched_getaffinity)
//! // on each vCPU thread, first thing:
//! let cpu = pin::pin_vcpu(&plan, index)?; // sched_setaffinity of the calling thread to one CPU
//! plan.map            // vCPU → host CPU
//! plan.oversubscribed // more vCPUs than allowed CPUs: some share a CPU
//! ```
//!
//! The plan gives vCPU `i` the `i`-th CPU of the allowed set (in increasing CPU number), so
//! that a driver that restricts the worker with `taskset` or a cgroup cpuset is obeyed, and
//! CPUs outside the set are never touched. Where vCPUs outnumber the allowed CPUs they go
//! round-robin (vCPU `i` on CPU `allowed[i % n]`): every vCPU is still pinned, some share a
//! CPU, and the [`Pinning`] says so with `oversubscribed` — a result from such a run measures
//! time-slicing as well as the code.
//!
//! Only the calling thread is pinned (`sched_setaffinity(0, ..)` acts on a thread), so each
//! vCPU thread calls [`pin_vcpu`] itself, at its start, before its measured region. The sim
//! backend does so in `sim::run_with_options` when asked (`--pin`); the kvm backend's vCPU
//! thread must do the same at the top of its thread body.

use std::mem::size_of;

/// Why the CPU set could not be read or the thread could not be pinned.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// `sched_getaffinity` failed.
    #[error("sched_getaffinity: {0}")]
    GetAffinity(std::io::Error),
    /// The process may run on no CPU we can name (an empty or out-of-range mask).
    #[error("the process's allowed CPU set is empty")]
    NoCpus,
    /// A vCPU index the plan has no entry for.
    #[error("vCPU {index} is not in the pinning plan of {nr_vcpus} vCPUs")]
    NoSuchVcpu {
        /// The index asked for.
        index: usize,
        /// vCPUs in the plan.
        nr_vcpus: usize,
    },
    /// `sched_setaffinity` to one CPU failed.
    #[error("sched_setaffinity of vCPU {index} to CPU {cpu}: {source}")]
    SetAffinity {
        /// The vCPU.
        index: usize,
        /// The CPU.
        cpu: usize,
        /// What the kernel said.
        source: std::io::Error,
    },
}

pub use shadowlab_schema::Pinning;

/// The CPUs the calling thread may run on (its affinity mask, which a new thread inherits and
/// `taskset`/cpusets restrict), in increasing order.
pub fn allowed_cpus() -> Result<Vec<usize>, PinError> {
    // SAFETY: cpu_set_t is a plain bit array; all-zero bits are a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live cpu_set_t of the size passed; the kernel writes at most that many
    // bytes into it. pid 0 is the calling thread.
    let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(PinError::GetAffinity(std::io::Error::last_os_error()));
    }
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` < CPU_SETSIZE, the number of bits in a cpu_set_t, so CPU_ISSET reads
        // inside `set`.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect();
    if cpus.is_empty() {
        return Err(PinError::NoCpus);
    }
    Ok(cpus)
}

/// The plan for `nr_vcpus` vCPUs over the CPUs `allowed` (increasing, non-empty): vCPU `i` on
/// `allowed[i % allowed.len()]`. Pure, for tests and for a driver that plans for a worker.
pub fn plan_over(allowed: &[usize], nr_vcpus: usize) -> Result<Pinning, PinError> {
    if allowed.is_empty() {
        return Err(PinError::NoCpus);
    }
    Ok(Pinning {
        map: (0..nr_vcpus)
            .map(|i| Some(allowed[i % allowed.len()]))
            .collect(),
        oversubscribed: nr_vcpus > allowed.len(),
        allowed_cpus: allowed.to_vec(),
    })
}

/// The plan for `nr_vcpus` vCPUs over the CPUs the calling thread may run on. Call it on the
/// thread that will spawn the vCPU threads, before spawning them.
pub fn plan(nr_vcpus: usize) -> Result<Pinning, PinError> {
    plan_over(&allowed_cpus()?, nr_vcpus)
}

/// Pins the **calling thread** to vCPU `index`'s CPU in `plan` and returns that CPU. Call it
/// first thing on the vCPU's thread, before its measured region.
pub fn pin_vcpu(plan: &Pinning, index: usize) -> Result<usize, PinError> {
    let cpu = plan
        .map
        .get(index)
        .copied()
        .flatten()
        .ok_or(PinError::NoSuchVcpu {
            index,
            nr_vcpus: plan.map.len(),
        })?;
    pin_current_thread(cpu).map_err(|source| PinError::SetAffinity { index, cpu, source })?;
    Ok(cpu)
}

/// Restricts the calling thread to `cpu` alone.
pub fn pin_current_thread(cpu: usize) -> Result<(), std::io::Error> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: all-zero bits are a valid (empty) cpu_set_t.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` < CPU_SETSIZE (checked above), so CPU_SET writes inside `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a live, initialised cpu_set_t of the size passed; the kernel only reads
    // it. pid 0 is the calling thread, so no other thread's affinity changes.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The CPU the calling thread is running on right now (`sched_getcpu`), if the kernel says.
pub fn current_cpu() -> Option<usize> {
    // SAFETY: sched_getcpu takes no arguments and touches no memory of ours.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_gives_each_vcpu_its_own_cpu_where_there_are_enough() {
        let p = plan_over(&[1, 3, 4, 7], 3).unwrap();
        assert_eq!(p.map, vec![Some(1), Some(3), Some(4)]);
        assert!(!p.oversubscribed);
        let p = plan_over(&[1, 3, 4, 7], 4).unwrap();
        assert_eq!(p.map, vec![Some(1), Some(3), Some(4), Some(7)]);
        assert!(!p.oversubscribed);
    }

    #[test]
    fn plan_shares_round_robin_and_says_so_when_oversubscribed() {
        let p = plan_over(&[0, 1], 5).unwrap();
        assert_eq!(p.map, vec![Some(0), Some(1), Some(0), Some(1), Some(0)]);
        assert!(p.oversubscribed);
        assert!(matches!(plan_over(&[], 1), Err(PinError::NoCpus)));
    }

    #[test]
    fn a_pinned_thread_runs_on_its_cpu_only() {
        let allowed = allowed_cpus().unwrap();
        let plan = plan(allowed.len() + 1).unwrap();
        assert!(plan.oversubscribed);
        // On a thread of its own, so the test harness's thread keeps its mask.
        let last = allowed.len();
        std::thread::scope(|s| {
            s.spawn(|| {
                let cpu = pin_vcpu(&plan, last).unwrap();
                assert_eq!(cpu, allowed[0], "the extra vCPU wraps to the first CPU");
                assert_eq!(allowed_cpus().unwrap(), vec![cpu]);
                assert_eq!(current_cpu(), Some(cpu));
            });
        });
        assert_eq!(
            allowed_cpus().unwrap(),
            allowed,
            "other threads are not pinned"
        );
        assert!(matches!(
            pin_vcpu(&plan, last + 1),
            Err(PinError::NoSuchVcpu { .. })
        ));
    }
}
