//! Kicking a vCPU out of KVM_RUN, and the requests a kick delivers: KVM's
//! `kvm_make_request` / `kvm_vcpu_kick` / `kvm_check_request`, in userspace.
//!
//! A kick sets the request bit, then `kvm_run.immediate_exit`, then sends [`kick_signal`] to the
//! vCPU thread. If the thread is inside KVM_RUN the signal makes it return EINTR; if it is about
//! to enter, `immediate_exit` makes KVM_RUN return EINTR at once; either way the thread clears
//! `immediate_exit` and checks its requests before re-entering — the order (request, then
//! immediate_exit; on the vCPU: clear immediate_exit, then check requests) is what makes a
//! request never sleep past an entry.

use std::sync::atomic::{AtomicI32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, Once};

/// Request: flush this vCPU's TLB before re-entry (KVM_REQ_TLB_FLUSH).
pub const REQ_TLB_FLUSH: u64 = 1 << 0;
/// Request: stop (watchdog or another vCPU's fatal failure).
pub const REQ_STOP: u64 = 1 << 1;

/// The real-time signal used for kicks.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 3
}

extern "C" fn on_kick(_sig: libc::c_int) {
    // Nothing to do: the signal's only job is to interrupt KVM_RUN with EINTR.
}

/// Installs the kick handler once per process (without SA_RESTART, so KVM_RUN returns EINTR).
pub fn install_handler() -> Result<(), std::io::Error> {
    static ONCE: Once = Once::new();
    static RESULT: AtomicI32 = AtomicI32::new(0);
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid value to fill in; the handler is async-signal-
        // safe (it does nothing).
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_kick as *const () as usize;
            sa.sa_flags = 0;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(kick_signal(), &sa, std::ptr::null_mut())
        };
        let errno = if rc == 0 {
            0
        } else {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
        };
        RESULT.store(errno, Ordering::Release);
    });
    match RESULT.load(Ordering::Acquire) {
        0 => Ok(()),
        e => Err(std::io::Error::from_raw_os_error(e)),
    }
}

/// Where a running vCPU can be reached.
struct Target {
    immediate_exit: *const AtomicU8,
    thread: libc::pthread_t,
}

/// The kick side of one vCPU, shared with every thread that may kick it.
pub struct VcpuKick {
    requests: AtomicU64,
    target: Mutex<Option<Target>>,
    kicks: AtomicU64,
}

// SAFETY: `immediate_exit` points into the vCPU's kvm_run mapping and is only dereferenced under
// the mutex while the vCPU thread has it registered; the thread unregisters (under the same
// mutex) before the mapping can go away.
unsafe impl Send for VcpuKick {}
// SAFETY: as above.
unsafe impl Sync for VcpuKick {}

impl Default for VcpuKick {
    fn default() -> Self {
        Self::new()
    }
}

impl VcpuKick {
    /// No thread registered, no requests.
    pub fn new() -> Self {
        Self {
            requests: AtomicU64::new(0),
            target: Mutex::new(None),
            kicks: AtomicU64::new(0),
        }
    }

    /// Called by the vCPU thread before its first KVM_RUN: `immediate_exit` is the address of
    /// its `kvm_run.immediate_exit`.
    ///
    /// # Safety
    /// `immediate_exit` must stay valid until [`VcpuKick::unregister`] is called, and the calling
    /// thread must be the one that runs the vCPU.
    pub unsafe fn register(&self, immediate_exit: *mut u8) {
        let mut t = self.target.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: pthread_self has no preconditions.
        let thread = unsafe { libc::pthread_self() };
        *t = Some(Target {
            immediate_exit: immediate_exit.cast::<AtomicU8>(),
            thread,
        });
    }

    /// Called by the vCPU thread before it drops the vCPU fd.
    pub fn unregister(&self) {
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// `kvm_make_request` + `kvm_vcpu_kick`: posts `req` and forces the vCPU out of the guest.
    pub fn make_request_and_kick(&self, req: u64) {
        self.requests.fetch_or(req, Ordering::SeqCst);
        let t = self.target.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = t.as_ref() {
            // SAFETY: registered, so the kvm_run mapping is alive (see `register`); a byte
            // store through an atomic is sound against the kernel reading it.
            unsafe { (*t.immediate_exit).store(1, Ordering::SeqCst) };
            // SAFETY: the thread is alive while registered (it unregisters before exiting).
            unsafe { libc::pthread_kill(t.thread, kick_signal()) };
            self.kicks.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Called by the vCPU thread itself to make its next KVM_RUN return EINTR at once (KVM
    /// then only completes the exit in progress).
    pub fn set_immediate_exit(&self) {
        let t = self.target.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = t.as_ref() {
            // SAFETY: registered, see above.
            unsafe { (*t.immediate_exit).store(1, Ordering::SeqCst) };
        }
    }

    /// Called by the vCPU thread after KVM_RUN returned EINTR.
    pub fn clear_immediate_exit(&self) {
        let t = self.target.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = t.as_ref() {
            // SAFETY: registered, see above.
            unsafe { (*t.immediate_exit).store(0, Ordering::SeqCst) };
        }
    }

    /// `kvm_check_request`: whether `req` is pending, clearing it.
    pub fn check_request(&self, req: u64) -> bool {
        self.requests.load(Ordering::Acquire) & req != 0
            && self.requests.fetch_and(!req, Ordering::AcqRel) & req != 0
    }

    /// Whether `req` is pending (not cleared).
    pub fn test_request(&self, req: u64) -> bool {
        self.requests.load(Ordering::Acquire) & req != 0
    }

    /// Kicks delivered to a registered thread.
    pub fn kicks(&self) -> u64 {
        self.kicks.load(Ordering::Relaxed)
    }
}

/// Fresh kick states for `n` vCPUs.
pub fn new_kicks(n: usize) -> Vec<VcpuKick> {
    (0..n).map(|_| VcpuKick::new()).collect()
}

/// `kvm_make_all_cpus_request`: posts `req` to every vCPU but `except` and kicks them.
pub fn make_all_cpus_request(vcpus: &[VcpuKick], req: u64, except: Option<usize>) {
    for (i, k) in vcpus.iter().enumerate() {
        if Some(i) != except {
            k.make_request_and_kick(req);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn requests_are_set_checked_and_cleared() {
        let k = VcpuKick::new();
        assert!(!k.check_request(REQ_TLB_FLUSH));
        k.make_request_and_kick(REQ_TLB_FLUSH); // nobody registered: only the request
        assert!(k.test_request(REQ_TLB_FLUSH));
        assert!(k.check_request(REQ_TLB_FLUSH));
        assert!(!k.check_request(REQ_TLB_FLUSH));
        assert_eq!(k.kicks(), 0);
    }

    #[test]
    fn a_kick_interrupts_a_blocking_syscall_and_sets_immediate_exit() {
        install_handler().unwrap();
        let k = Arc::new(VcpuKick::new());
        let flag = Arc::new(AtomicU8::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let (k2, f2) = (k.clone(), flag.clone());
        let t = std::thread::spawn(move || {
            // SAFETY: `flag` outlives the registration (unregistered below, before the thread ends).
            unsafe { k2.register(f2.as_ptr()) };
            tx.send(()).unwrap();
            // Stand-in for KVM_RUN: a blocking sleep that a signal interrupts with EINTR.
            let start = Instant::now();
            // SAFETY: sleep has no memory effects.
            let left = unsafe { libc::sleep(10) };
            let interrupted = left > 0 && start.elapsed() < Duration::from_secs(9);
            k2.unregister();
            interrupted
        });
        rx.recv().unwrap();
        // The signal may arrive before the thread blocks; keep kicking until it returns.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !t.is_finished() && Instant::now() < deadline {
            k.make_request_and_kick(REQ_STOP);
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(t.join().unwrap(), "the kick interrupted the sleep");
        assert_eq!(flag.load(Ordering::SeqCst), 1, "immediate_exit was set");
        assert!(k.check_request(REQ_STOP));
    }
}
