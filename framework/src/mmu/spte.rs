//! Shadow PTE format, access bits and page-fault error codes (KVM's spte.h and the PFERR_*
//! masks).
//!
//! Shadow page tables are real x86-64 page tables: what the hardware (or the sim walker) reads.
//! Non-leaf SPTEs carry full permissions (P|W|U|A, no NX) and the leaf carries the combined
//! permission of the whole guest walk, as in KVM (`shadow_acc_all` above the leaf). One
//! software bit, ignored by hardware, remembers that the guest allows writes even when W is
//! withheld for write tracking or dirty logging ([`SPTE_MMU_WRITABLE`], KVM's bit of the same
//! name), so `mmu_try_to_unsync_pages` can restore W without a new guest walk.

use shadowlab_abi::layout::pte;

/// Present.
pub const SPTE_P: u64 = pte::P;
/// Writable.
pub const SPTE_W: u64 = pte::W;
/// User.
pub const SPTE_U: u64 = pte::U;
/// Accessed (set by the walker).
pub const SPTE_A: u64 = pte::A;
/// Dirty (set by the walker on a write through a leaf).
pub const SPTE_D: u64 = pte::D;
/// No-execute.
pub const SPTE_NX: u64 = pte::NX;
/// The physical-address field.
pub const SPTE_ADDR: u64 = pte::ADDR_MASK;
/// Software bit 58 (ignored by hardware): the guest's PTEs allow writes to this page, whether
/// or not W is currently granted. KVM's `SPTE_MMU_WRITABLE`.
pub const SPTE_MMU_WRITABLE: u64 = 1 << 58;
/// Flags of a non-leaf SPTE.
pub const SPTE_NONLEAF: u64 = SPTE_P | SPTE_W | SPTE_U | SPTE_A;

/// Access bit: execute allowed (KVM's `ACC_EXEC_MASK`).
pub const ACC_EXEC: u8 = 1;
/// Access bit: write allowed (KVM's `ACC_WRITE_MASK`).
pub const ACC_WRITE: u8 = 2;
/// Access bit: user-mode access allowed (KVM's `ACC_USER_MASK`).
pub const ACC_USER: u8 = 4;
/// All three.
pub const ACC_ALL: u8 = ACC_EXEC | ACC_WRITE | ACC_USER;

/// Page-fault error code bits (the x86 #PF error code; KVM's `PFERR_*_MASK`).
pub mod pferr {
    /// The fault was a protection violation on a present page (clear: not present).
    pub const PRESENT: u32 = 1;
    /// The access was a write.
    pub const WRITE: u32 = 2;
    /// The access was from user mode (CPL3).
    pub const USER: u32 = 4;
    /// A reserved bit was set in a paging-structure entry.
    pub const RSVD: u32 = 8;
    /// The access was an instruction fetch.
    pub const FETCH: u32 = 16;
}

/// Guest MAXPHYADDR: physical-address bits the guest may use. Bits `MAXPHYADDR..52` of a
/// guest PTE are reserved (a guest PTE setting them faults with [`pferr::RSVD`]).
pub const GUEST_MAXPHYADDR: u32 = 46;
/// Reserved physical-address bits of a guest PTE at any level.
pub const GPTE_RSVD_ADDR: u64 = ((1u64 << 52) - 1) & !((1u64 << GUEST_MAXPHYADDR) - 1);

/// An access, as the x86 page-fault error code describes it (KVM passes accesses around as a
/// `pfec` the same way): [`pferr::WRITE`], [`pferr::USER`], [`pferr::FETCH`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Access(pub u32);

impl Access {
    /// A supervisor read.
    pub const READ: Access = Access(0);
    /// A supervisor write.
    pub const WRITE: Access = Access(pferr::WRITE);
    /// A supervisor instruction fetch.
    pub const FETCH: Access = Access(pferr::FETCH);

    /// The access described by a #PF error code (the other bits are ignored): what the KVM
    /// backend passes to `page_fault` after a #PF exit.
    pub const fn from_pfec(error_code: u32) -> Access {
        Access(error_code & (pferr::WRITE | pferr::USER | pferr::FETCH))
    }
    /// The same access from user mode.
    pub const fn user(self) -> Access {
        Access(self.0 | pferr::USER)
    }
    /// Whether this is a write.
    pub const fn is_write(self) -> bool {
        self.0 & pferr::WRITE != 0
    }
    /// Whether this is from user mode.
    pub const fn is_user(self) -> bool {
        self.0 & pferr::USER != 0
    }
    /// Whether this is an instruction fetch.
    pub const fn is_fetch(self) -> bool {
        self.0 & pferr::FETCH != 0
    }
    /// Whether `acc` (ACC_* bits) permits this access. CR0.WP is taken as set (a supervisor
    /// write to a read-only page faults: the shadow MMU's write protection depends on it), and
    /// SMEP/SMAP as clear.
    pub const fn permitted_by(self, acc: u8) -> bool {
        let denied = (self.is_write() && acc & ACC_WRITE == 0)
            || (self.is_user() && acc & ACC_USER == 0)
            || (self.is_fetch() && acc & ACC_EXEC == 0);
        !denied
    }
    /// The error-code bits this access contributes to a fault.
    pub const fn pfec(self) -> u32 {
        self.0 & (pferr::WRITE | pferr::USER | pferr::FETCH)
    }
}

/// The ACC_* permissions a guest PTE grants (KVM's `FNAME(gpte_access)`).
#[inline]
pub const fn gpte_access(gpte: u64) -> u8 {
    let mut acc = 0;
    if gpte & pte::W != 0 {
        acc |= ACC_WRITE;
    }
    if gpte & pte::U != 0 {
        acc |= ACC_USER;
    }
    if gpte & pte::NX == 0 {
        acc |= ACC_EXEC;
    }
    acc
}

/// Whether an SPTE is present.
#[inline]
pub const fn is_present(spte: u64) -> bool {
    spte & SPTE_P != 0
}

/// The ACC_* permissions a leaf SPTE grants right now (W as currently granted).
#[inline]
pub const fn spte_access(spte: u64) -> u8 {
    gpte_access(spte)
}

/// Builds a leaf SPTE for machine frame `mfn` with ACC_* `access`; `writable` says whether W is
/// granted now (it may be withheld from a guest-writable page for write tracking). KVM's
/// `make_spte`, without memory types and dirty logging.
#[inline]
pub const fn make_leaf_spte(mfn: u64, access: u8, writable: bool) -> u64 {
    let mut spte = SPTE_P | SPTE_A | (mfn << 12);
    if access & ACC_USER != 0 {
        spte |= SPTE_U;
    }
    if access & ACC_EXEC == 0 {
        spte |= SPTE_NX;
    }
    if access & ACC_WRITE != 0 {
        spte |= SPTE_MMU_WRITABLE;
        if writable {
            spte |= SPTE_W | SPTE_D;
        }
    }
    spte
}

/// Whether going from `old` to `new` takes a permission away (or changes the frame), so
/// another vCPU's TLB may hold a translation that is no longer allowed: the condition for a
/// remote TLB flush (KVM's `spte_needs_flush`/`mmu_spte_update` result, simplified).
#[inline]
pub const fn needs_flush(old: u64, new: u64) -> bool {
    if !is_present(old) {
        return false;
    }
    if !is_present(new) || (old & SPTE_ADDR) != (new & SPTE_ADDR) {
        return true;
    }
    let lost = spte_access(old) & !spte_access(new);
    lost != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_checks_follow_x86_rules() {
        assert!(Access::READ.permitted_by(0));
        assert!(!Access::WRITE.permitted_by(ACC_USER | ACC_EXEC));
        assert!(Access::WRITE.permitted_by(ACC_WRITE));
        assert!(!Access::READ.user().permitted_by(ACC_WRITE));
        assert!(!Access::FETCH.permitted_by(ACC_WRITE));
        assert_eq!(Access::WRITE.user().pfec(), pferr::WRITE | pferr::USER);
    }

    #[test]
    fn gpte_and_spte_access_agree() {
        let g = pte::P | pte::W | pte::NX;
        assert_eq!(gpte_access(g), ACC_WRITE);
        let s = make_leaf_spte(5, ACC_WRITE | ACC_USER, false);
        assert_eq!(s & SPTE_ADDR, 5 << 12);
        assert_eq!(spte_access(s), ACC_USER);
        assert_ne!(s & SPTE_MMU_WRITABLE, 0);
        let w = make_leaf_spte(5, ACC_WRITE | ACC_USER, true);
        assert_eq!(spte_access(w), ACC_USER | ACC_WRITE);
        assert!(needs_flush(w, s));
        assert!(!needs_flush(s, w));
        assert!(needs_flush(s, 0));
        assert!(needs_flush(
            s,
            make_leaf_spte(6, ACC_WRITE | ACC_USER, false)
        ));
        assert!(!needs_flush(0, s));
    }

    #[test]
    fn reserved_address_bits_are_between_maxphyaddr_and_52() {
        assert_eq!(GPTE_RSVD_ADDR, 0x000f_c000_0000_0000);
    }
}
