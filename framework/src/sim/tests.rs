//! Tests of the simulated backend, driving it through the workloads' `Cpu` trait with a small
//! page-table manager written here (the real one lives in the workloads crate).

use shadowlab_abi::layout::{self, direct_map, pte};
use shadowlab_workloads::Cpu;

use super::*;
use crate::mmu::check_translation;
use crate::mmu::spte::pferr;
use shadowlab_policies::SyncPolicy;

const PAGE: u64 = 4096;
const UVA: u64 = layout::WORKLOAD_BASE;

fn cfg(vcpus: usize, seed: u64) -> SimConfig {
    SimConfig {
        vcpus,
        seed,
        ram_bytes: 8 << 20,
        pool_pages: 256,
    }
}

/// A bump allocator over the vCPU's free frames and a 4-level mapper that writes PTEs through
/// the direct map, as a guest kernel does. Shared with `fetch_race`.
pub(super) struct Pager {
    next: u64,
    end: u64,
}

impl Pager {
    pub(super) fn new(cpu: &impl Cpu) -> Self {
        let r = cpu.free_frames();
        Pager {
            next: r.start,
            end: r.end,
        }
    }

    pub(super) fn frame(&mut self) -> u64 {
        assert!(self.next < self.end, "test pager out of frames");
        let f = self.next;
        self.next += PAGE;
        f
    }

    fn entry(table: u64, gva: u64, level: u32) -> u64 {
        direct_map(table + layout::pt_index(gva, level) as u64 * 8)
    }

    /// Maps `gva` → `gpa` in `root` with leaf `flags`; returns the direct-map gva of the leaf.
    fn map(&mut self, cpu: &mut impl Cpu, root: u64, gva: u64, gpa: u64, flags: u64) -> u64 {
        let mut table = root;
        for level in (2..=4).rev() {
            let e = Self::entry(table, gva, level);
            let v = cpu.read_u64(e);
            table = if v & pte::P != 0 {
                v & pte::ADDR_MASK
            } else {
                let t = self.frame();
                cpu.write_u64(e, t | pte::P | pte::W | pte::U);
                t
            };
        }
        let e = Self::entry(table, gva, 1);
        cpu.write_u64(e, gpa | flags);
        e
    }
}

#[test]
fn maps_writes_reads_and_remaps_with_invlpg() {
    let run = run(&cfg(1, 1), |cpu| {
        let mut p = Pager::new(cpu);
        let root = cpu.boot_root();
        let (a, b) = (p.frame(), p.frame());
        cpu.write_u64(direct_map(a), 0xaaaa);
        cpu.write_u64(direct_map(b), 0xbbbb);
        let leaf = p.map(cpu, root, UVA, a, pte::P | pte::W | pte::U);
        assert_eq!(cpu.read_u64(UVA), 0xaaaa);
        assert_eq!(cpu.read_u64(UVA), 0xaaaa);
        cpu.write_u64(UVA + 8, 0x1234);
        assert_eq!(cpu.read_u64(direct_map(a) + 8), 0x1234);
        cpu.write_u64(leaf, b | pte::P | pte::W | pte::U);
        cpu.invlpg(UVA);
        assert_eq!(cpu.read_u64(UVA), 0xbbbb);
        assert!(cpu.vm().mmu().audit().is_ok());
        cpu.stats()
    })
    .unwrap();
    assert!(run.mmu.faults > 0);
    assert!(run.mmu.unsyncs > 0, "the PT write went through unsync");
    assert!(
        run.mmu.emulated_writes > 0,
        "the PML4/PDPT/PD writes were emulated"
    );
    assert!(run.cpus[0].tlb_hits > 0, "{:?}", run.cpus[0]);
}

#[test]
fn a_missing_invlpg_leaves_a_stale_translation_as_hardware_may() {
    run(&cfg(1, 2), |cpu| {
        let mut p = Pager::new(cpu);
        let root = cpu.boot_root();
        let (a, b) = (p.frame(), p.frame());
        cpu.write_u64(direct_map(a), 1);
        cpu.write_u64(direct_map(b), 2);
        let leaf = p.map(cpu, root, UVA, a, pte::P | pte::W | pte::U);
        assert_eq!(cpu.read_u64(UVA), 1);
        cpu.write_u64(leaf, b | pte::P | pte::W | pte::U);
        assert_eq!(
            cpu.read_u64(UVA),
            1,
            "no INVLPG yet: the TLB keeps the old frame"
        );
        cpu.flush_tlb();
        assert_eq!(cpu.read_u64(UVA), 2);
    })
    .unwrap();
}

#[test]
fn one_vcpu_is_deterministic_for_a_seed() {
    let work = |cpu: &mut SimCpu<'_, BuildPolicy>| {
        let mut p = Pager::new(cpu);
        let root = cpu.boot_root();
        let mut sum = 0;
        for i in 0..64 {
            let f = p.frame();
            cpu.write_u64(direct_map(f), i * 3);
            p.map(cpu, root, UVA + i * PAGE * 513, f, pte::P | pte::W | pte::U);
            sum += cpu.read_u64(UVA + i * PAGE * 513);
            if i % 8 == 0 {
                cpu.flush_tlb();
            }
        }
        (sum, cpu.shadow_translate(UVA).map(|t| t.mpa_page).ok())
    };
    let strip = |mut s: crate::mmu::MmuStats| {
        s.lock.read_wait_ns = 0;
        s.lock.write_wait_ns = 0;
        s
    };
    let a = run(&cfg(1, 7), work).unwrap();
    let b = run(&cfg(1, 7), work).unwrap();
    let c = run(&cfg(1, 8), work).unwrap();
    assert_eq!(a.results, b.results);
    assert_eq!(strip(a.mmu), strip(b.mmu));
    assert_eq!(a.cpus, b.cpus);
    assert_eq!(a.results[0].0, c.results[0].0, "same guest-visible result");
    assert_ne!(a.results[0].1, c.results[0].1, "different backing frames");
}

#[test]
fn a_guest_fault_stops_the_vcpu_with_an_error() {
    let e = run(&cfg(1, 3), |cpu| cpu.read_u64(UVA)).unwrap_err();
    match e {
        SimError::Vcpu {
            vcpu: 0,
            fault: SimFault::Guest(f),
        } => assert_eq!((f.gva, f.error_code), (UVA, pferr::USER)),
        other => panic!("{other}"),
    }
}

#[test]
fn a_pte_into_the_pool_faults_and_maps_nothing() {
    run(&cfg(1, 4), |cpu| {
        let mut p = Pager::new(cpu);
        let root = cpu.boot_root();
        let pool = cpu.vm().mem().pool_base();
        p.map(cpu, root, UVA, pool, pte::P | pte::W);
        match cpu.try_read_u64(UVA) {
            Err(SimFault::Guest(f)) => assert!(f.is_reserved()),
            other => panic!("{other:?}"),
        }
        assert!(cpu.shadow_translate(UVA).is_err());
        assert!(cpu.tlb_entry(UVA).is_none());
    })
    .unwrap();
}

#[test]
fn bad_cr3_and_misaligned_access_are_errors() {
    run(&cfg(1, 5), |cpu| {
        let ram = cpu.vm().mem().ram_bytes();
        assert!(matches!(cpu.try_load_cr3(ram), Err(SimFault::Mmu(_))));
        assert!(matches!(
            cpu.try_read_u64(direct_map(4)),
            Err(SimFault::Misaligned(_))
        ));
        // Still usable afterwards.
        assert!(cpu.try_read_u64(direct_map(0)).is_ok());
    })
    .unwrap();
    let e = run(&cfg(2, 5), |cpu| {
        if cpu.id() == 0 {
            cpu.load_cr3(1 << 45);
        } else {
            loop {
                cpu.pause();
            }
        }
    })
    .unwrap_err();
    assert!(
        matches!(
            e,
            SimError::Vcpu {
                vcpu: 0,
                fault: SimFault::Mmu(_)
            }
        ),
        "{e}"
    );
}

#[test]
fn shadow_agrees_with_guest_after_flush_across_root_switches() {
    run(&cfg(1, 6), |cpu| {
        // Supervisor, so the leaves without U below are read too and the comparison covers
        // every U/W/NX combination of the shadow leaves.
        cpu.set_privilege(Privilege::Supervisor);
        let mut p = Pager::new(cpu);
        let boot = cpu.boot_root();
        // A second root sharing the direct map and the user PDPT.
        let other = p.frame();
        let dm = cpu.read_u64(direct_map(boot + layout::DIRECT_MAP_SLOT as u64 * 8));
        cpu.write_u64(direct_map(other + layout::DIRECT_MAP_SLOT as u64 * 8), dm);
        let frames: Vec<u64> = (0..8).map(|_| p.frame()).collect();
        let gvas: Vec<u64> = (0..16).map(|i| UVA + i * PAGE * 37).collect();
        let mut leaves = Vec::new();
        for (i, &g) in gvas.iter().enumerate() {
            let flags = [
                pte::P | pte::W,
                pte::P,
                pte::P | pte::U | pte::NX,
                pte::P | pte::W | pte::U,
            ][i % 4];
            leaves.push(p.map(cpu, boot, g, frames[i % 8], flags));
            cpu.read_u64(g);
        }
        let user_pml4e = cpu.read_u64(direct_map(boot + layout::pt_index(UVA, 4) as u64 * 8));
        cpu.write_u64(
            direct_map(other + layout::pt_index(UVA, 4) as u64 * 8),
            user_pml4e,
        );
        for round in 0..6u64 {
            // Protect, remap and unmap some entries (leaf PT writes: the unsync path).
            for (i, &l) in leaves.iter().enumerate() {
                match (i as u64 + round) % 4 {
                    0 => cpu.write_u64(l, frames[(i + 1) % 8] | pte::P | pte::W),
                    1 => cpu.write_u64(l, frames[i % 8] | pte::P),
                    2 => cpu.write_u64(l, 0),
                    _ => {}
                }
            }
            let root = if round % 2 == 0 { other } else { boot };
            cpu.load_cr3(root);
            for &g in &gvas {
                let _ = cpu.try_read_u64(g);
            }
            for &g in &gvas {
                let r = check_translation(g, &cpu.guest_translate(g), &cpu.shadow_translate(g));
                assert!(r.is_ok(), "round {round}: {}", r.unwrap_err());
            }
            assert!(
                cpu.vm().mmu().audit().is_ok(),
                "{:?}",
                cpu.vm().mmu().audit()
            );
        }
    })
    .unwrap();
}

/// The race the protocol guards against: vCPU 0 rewrites a leaf PTE in a page table that
/// vCPU 1's root also uses, then publishes a generation; vCPU 1 flushes its own TLB and must
/// read the frame of that generation, never the previous one. Returns (stale reads, stats).
fn unsync_race<P: SyncPolicy>(iters: u64, seed: u64) -> (u64, crate::mmu::MmuStats) {
    let c = SimConfig {
        vcpus: 2,
        seed,
        ram_bytes: 8 << 20,
        pool_pages: 256,
    };
    let run = run_with::<P, _, _>(&c, |cpu| {
        // The mailbox: the page every vCPU shares (zeroed at boot).
        let mbox = direct_map(cpu.shared_page());
        let (ready, gen, ack) = (mbox, mbox + 8, mbox + 16);
        if cpu.id() == 0 {
            let mut p = Pager::new(cpu);
            let (a, b) = (p.frame(), p.frame());
            cpu.write_u64(direct_map(a), 0xa);
            cpu.write_u64(direct_map(b), 0xb);
            let leaf = p.map(cpu, cpu.boot_root(), UVA, a, pte::P | pte::W | pte::U);
            // Share the user half with vCPU 1's root (boot PML4s are consecutive frames).
            let slot = 8 * layout::pt_index(UVA, 4) as u64;
            let pml4e = cpu.read_u64(direct_map(cpu.boot_root() + slot));
            cpu.write_u64(direct_map(cpu.boot_root() + PAGE + slot), pml4e);
            cpu.write_u64(ready, 1);
            for i in 1..=iters {
                let frame = if i % 2 == 1 { b } else { a };
                cpu.write_u64(leaf, frame | pte::P | pte::W | pte::U);
                cpu.write_u64(gen, i);
                while cpu.read_u64(ack) != i {
                    cpu.pause();
                }
            }
            0
        } else {
            while cpu.read_u64(ready) != 1 {
                cpu.pause();
            }
            let mut stale = 0;
            for i in 1..=iters {
                while cpu.read_u64(gen) != i {
                    cpu.pause();
                }
                cpu.flush_tlb();
                let want = if i % 2 == 1 { 0xb } else { 0xa };
                if cpu.read_u64(UVA) != want {
                    stale += 1;
                }
                cpu.write_u64(ack, i);
            }
            stale
        }
    })
    .unwrap();
    (run.results[1], run.mmu)
}

#[test]
fn unsync_race_sees_no_stale_translation_after_flush() {
    const ITERS: u64 = 2000;
    let (stale, s) = unsync_race::<BuildPolicy>(ITERS, 9);
    assert_eq!(stale, 0, "stale translations after a flush");
    assert!(s.unsyncs >= ITERS / 2, "{s:?}");
    assert!(s.syncs >= ITERS / 2);
    assert!(s.remote_tlb_flushes > 0);
}

#[test]
fn every_policy_runs_in_one_build_and_only_always_lock_never_skips() {
    use shadowlab_policies::{AcquireLoad, AlwaysLock, RmbFence, SeqCstFence};
    let (stale, s) = unsync_race::<AcquireLoad>(200, 1);
    assert_eq!(stale, 0);
    assert!(s.sync_roots_lockless_skips > 0);
    let (stale, s) = unsync_race::<RmbFence>(200, 1);
    assert_eq!(stale, 0);
    assert!(s.sync_roots_lockless_skips > 0);
    let (stale, s) = unsync_race::<SeqCstFence>(200, 1);
    assert_eq!(stale, 0);
    assert!(s.sync_roots_lockless_skips > 0);
    let (stale, s) = unsync_race::<AlwaysLock>(200, 1);
    assert_eq!(stale, 0);
    assert_eq!(s.sync_roots_lockless_skips, 0);
    assert!(s.lock.write_acquisitions >= s.sync_roots);
}

/// Two vCPUs map, remap, unmap and switch roots concurrently on a pool small enough that
/// pages are recycled all the time; every read must see the frame just mapped, every read of
/// an unmapped page must fault, and the MMU must be consistent at the end.
#[test]
fn concurrent_churn_on_a_tiny_pool_stays_correct() {
    use shadowlab_workloads::rng::Rng;
    const OPS: u64 = 3000;
    let c = SimConfig {
        vcpus: 2,
        seed: 11,
        ram_bytes: 8 << 20,
        pool_pages: 24,
    };
    let run = run(&c, |cpu| {
        let mut rng = Rng::new(cpu.id() as u64 + 100);
        let mut p = Pager::new(cpu);
        let boot = cpu.boot_root();
        // A second root sharing the direct map; user mappings are made in both.
        let alt = p.frame();
        let dm = direct_map(boot + layout::DIRECT_MAP_SLOT as u64 * 8);
        let dme = cpu.read_u64(dm);
        cpu.write_u64(direct_map(alt + layout::DIRECT_MAP_SLOT as u64 * 8), dme);
        let frames: Vec<u64> = (0..16).map(|_| p.frame()).collect();
        for (k, &f) in frames.iter().enumerate() {
            cpu.write_u64(direct_map(f), ((cpu.id() as u64) << 32) | k as u64);
        }
        // 32 slots spread over several PDs and PTs.
        let slots: Vec<u64> = (0..32u64)
            .map(|i| UVA + (i % 4) * (1 << 30) + (i / 4) * (1 << 21))
            .collect();
        let mut mapped: Vec<Option<usize>> = vec![None; slots.len()];
        let mut leaves: Vec<Option<u64>> = vec![None; slots.len()];
        let mut cur = boot;
        let mut errors = 0u64;
        for _ in 0..OPS {
            let s = rng.below(slots.len() as u64) as usize;
            let g = slots[s];
            match rng.below(8) {
                0..=3 => {
                    let k = rng.below(frames.len() as u64) as usize;
                    let flags = pte::P | pte::W | pte::U;
                    let l1 = p.map(cpu, boot, g, frames[k], flags);
                    p.map(cpu, alt, g, frames[k], flags);
                    leaves[s] = Some(l1);
                    mapped[s] = Some(k);
                    cpu.invlpg(g);
                }
                // Unmap in both roots (the PTs are separate per root).
                4 if leaves[s].is_some() => {
                    for root in [boot, alt] {
                        let l = p.map(cpu, root, g, 0, 0);
                        cpu.write_u64(l, 0);
                    }
                    mapped[s] = None;
                    cpu.invlpg(g);
                }
                5 => {
                    cur = if cur == boot { alt } else { boot };
                    cpu.load_cr3(cur);
                }
                6 => cpu.flush_tlb(),
                _ => {}
            }
            match (mapped[s], cpu.try_read_u64(g)) {
                (Some(k), Ok(v)) if v == ((cpu.id() as u64) << 32) | k as u64 => {}
                (None, Err(SimFault::Guest(_))) => {}
                _ => errors += 1,
            }
        }
        // The other vCPU may still be running: the audit takes the read lock and sees a
        // state between two write-locked operations, where every invariant must hold.
        if let Err(e) = cpu.vm().mmu().audit() {
            panic!("audit on vCPU {}: {e}", cpu.id());
        }
        errors
    })
    .unwrap();
    assert_eq!(run.results, vec![0, 0]);
    assert!(run.mmu.recycled > 100, "{:?}", run.mmu);
    assert!(run.mmu.remote_tlb_flushes > 0);
}

/// A recursive (self-mapping) PML4 slot, as some kernels use: the guest reads and writes its
/// own PML4 through it. Hardware simply follows the loop; here the PML4 is then shadowed at
/// every level, and writes through the alias must be emulated (never granted) so that the
/// shadow root follows them.
#[test]
fn recursive_pml4_slot_behaves_as_on_hardware() {
    run(&cfg(1, 12), |cpu| {
        let mut p = Pager::new(cpu);
        let root = cpu.boot_root();
        cpu.write_u64(direct_map(root + 5 * 8), root | pte::P | pte::W | pte::U);
        let rec = (5u64 << 39) | (5 << 30) | (5 << 21) | (5 << 12);
        let dm_entry = cpu.read_u64(direct_map(root + layout::DIRECT_MAP_SLOT as u64 * 8));
        assert_eq!(
            cpu.read_u64(rec + layout::DIRECT_MAP_SLOT as u64 * 8),
            dm_entry
        );
        // Build a user PDPT/PD/PT by hand and link it into the PML4 *through the alias*.
        let (pdpt, pd, pt, data) = (p.frame(), p.frame(), p.frame(), p.frame());
        cpu.write_u64(direct_map(data), 0x5eed);
        cpu.write_u64(
            direct_map(pdpt + 8 * layout::pt_index(UVA, 3) as u64),
            pd | pte::P | pte::W | pte::U,
        );
        cpu.write_u64(
            direct_map(pd + 8 * layout::pt_index(UVA, 2) as u64),
            pt | pte::P | pte::W | pte::U,
        );
        cpu.write_u64(
            direct_map(pt + 8 * layout::pt_index(UVA, 1) as u64),
            data | pte::P | pte::W | pte::U,
        );
        let slot = layout::pt_index(UVA, 4) as u64;
        cpu.write_u64(rec + 8 * slot, pdpt | pte::P | pte::W | pte::U);
        assert_eq!(
            cpu.read_u64(direct_map(root + 8 * slot)),
            pdpt | pte::P | pte::W | pte::U
        );
        assert_eq!(cpu.read_u64(UVA), 0x5eed);
        // The alias never became writable: the write was emulated.
        let t = cpu.shadow_translate(rec).unwrap();
        assert_eq!(t.access & crate::mmu::spte::ACC_WRITE, 0);
        assert!(cpu.vm().mmu().stats().emulations > 0);
        // Unlink it again through the alias; after a flush the user half is gone.
        cpu.write_u64(rec + 8 * slot, 0);
        cpu.flush_tlb();
        assert!(matches!(cpu.try_read_u64(UVA), Err(SimFault::Guest(_))));
        assert!(cpu.vm().mmu().audit().is_ok());
    })
    .unwrap();
}

/// Every workload of the workloads crate runs on sim and passes its own self-checks, with the
/// op count its parameters imply, on 1 vCPU and on 2 (each vCPU runs it; `unsync-race`
/// coordinates them).
#[test]
fn every_workload_passes_on_sim() {
    use shadowlab_workloads::{Params, Run, Workload};
    for w in Workload::ALL {
        let d = w.params();
        // Fewer iterations than the defaults: this is a correctness test, not a benchmark.
        let w = w.with_params(Params {
            iters: d.iters.min(200),
            ..d
        });
        for vcpus in [1, 2] {
            let c = SimConfig {
                vcpus,
                seed: 21,
                ram_bytes: 64 << 20,
                pool_pages: 2048,
            };
            let out = run(&c, |cpu| w.run(cpu))
                .unwrap_or_else(|e| panic!("{} on {vcpus}: {e}", w.name()));
            for (i, r) in out.results.iter().enumerate() {
                match r {
                    Ok(rep) => assert_eq!(rep.ops, w.expected_ops(), "{} vCPU {i}", w.name()),
                    Err(e) => panic!("{} on {vcpus} vCPUs, vCPU {i}: {e}", w.name()),
                }
            }
        }
    }
}

/// The direct-map address of the entry for `gva` at `level` in the tables under `root`
/// (tables above it must exist).
fn entry_at(cpu: &mut impl Cpu, root: u64, gva: u64, level: u32) -> u64 {
    let mut table = root;
    for l in ((level + 1)..=4).rev() {
        table = cpu.read_u64(Pager::entry(table, gva, l)) & pte::ADDR_MASK;
    }
    Pager::entry(table, gva, level)
}

/// The guest fault an access stopped with (panics on anything else).
fn guest_fault<T: std::fmt::Debug>(r: Result<T, SimFault>) -> GuestFault {
    match r {
        Err(SimFault::Guest(f)) => f,
        other => panic!("expected a guest fault, got {other:?}"),
    }
}

/// U is needed at every level for a user access, and the #PF error code says P|U (plus W or
/// I/D), as hardware sets it. The supervisor reads the same page, which fills the software
/// TLB with a translation that lacks U: that entry must not serve the user access that
/// follows (hardware checks the permissions its TLB entry was filled with). Fails if the MMU
/// ignores U anywhere (the walk, the shadow leaf, the shadow walk or the TLB).
#[test]
fn user_accesses_need_u_at_every_level_even_through_a_supervisor_filled_tlb_entry() {
    use crate::mmu::spte::ACC_USER;
    run(&cfg(1, 21), |cpu| {
        let mut p = Pager::new(cpu);
        let root = cpu.boot_root();
        let code = p.frame();
        cpu.write_u64(direct_map(code), u64::from(shadowlab_workloads::RET));
        p.map(cpu, root, UVA, code, pte::P | pte::W | pte::U | pte::D);
        cpu.fetch(UVA);
        cpu.write_u64(UVA, u64::from(shadowlab_workloads::RET));
        for level in 1..=4 {
            let e = entry_at(cpu, root, UVA, level);
            let v = cpu.read_u64(e);
            cpu.write_u64(e, v & !pte::U);
            cpu.flush_tlb();
            cpu.set_privilege(Privilege::Supervisor);
            assert_eq!(cpu.try_read_u64(UVA).unwrap(), 0xc3, "level {level}");
            let t = cpu
                .tlb_entry(UVA)
                .expect("the supervisor read filled the TLB");
            assert_eq!(t.access & ACC_USER, 0, "level {level}: {t:?}");
            cpu.set_privilege(Privilege::User);
            let f = guest_fault(cpu.try_read_u64(UVA));
            assert_eq!(f.error_code, pferr::PRESENT | pferr::USER, "level {level}");
            let f = guest_fault(cpu.try_write_u64(UVA, 1));
            assert_eq!(
                f.error_code,
                pferr::PRESENT | pferr::WRITE | pferr::USER,
                "level {level}"
            );
            let f = guest_fault(cpu.try_fetch(UVA));
            assert_eq!(
                f.error_code,
                pferr::PRESENT | pferr::USER | pferr::FETCH,
                "level {level}"
            );
            // The shadow side agrees with the guest's tables (U clear, after the flush).
            check_translation(UVA, &cpu.guest_translate(UVA), &cpu.shadow_translate(UVA)).unwrap();
            cpu.write_u64(e, v);
            cpu.flush_tlb();
            assert_eq!(cpu.try_read_u64(UVA).unwrap(), 0xc3, "level {level}");
        }
        // Not present: U and I/D, without P.
        let f = guest_fault(cpu.try_fetch(UVA + PAGE));
        assert_eq!(f.error_code, pferr::USER | pferr::FETCH);
    })
    .unwrap();
}

/// NX at any level forbids instruction fetches (EFER.NXE = 1), for user and supervisor alike,
/// also when a read has already built the shadow leaf and cached the translation: the leaf
/// must carry NX itself. Fails if a shadow leaf never gets NX.
#[test]
fn nx_at_any_level_forbids_fetches_through_a_cached_translation() {
    use crate::mmu::spte::SPTE_NX;
    run(&cfg(1, 22), |cpu| {
        let mut p = Pager::new(cpu);
        let root = cpu.boot_root();
        let code = p.frame();
        cpu.write_u64(direct_map(code), u64::from(shadowlab_workloads::RET));
        p.map(cpu, root, UVA, code, pte::P | pte::U);
        for privilege in [Privilege::User, Privilege::Supervisor] {
            cpu.set_privilege(privilege);
            let user = if privilege == Privilege::User {
                pferr::USER
            } else {
                0
            };
            for level in 1..=4 {
                let e = entry_at(cpu, root, UVA, level);
                let v = cpu.read_u64(e);
                cpu.fetch(UVA);
                cpu.write_u64(e, v | pte::NX);
                cpu.flush_tlb();
                assert_eq!(cpu.try_read_u64(UVA).unwrap(), 0xc3);
                let leaf = cpu.shadow_translate(UVA).unwrap().spte;
                assert_ne!(leaf & SPTE_NX, 0, "{privilege:?} level {level}: {leaf:#x}");
                let f = guest_fault(cpu.try_fetch(UVA));
                assert_eq!(
                    f.error_code,
                    pferr::PRESENT | user | pferr::FETCH,
                    "{privilege:?} level {level}"
                );
                cpu.write_u64(e, v);
                cpu.flush_tlb();
            }
        }
        // A byte that is not `ret` is refused, as the guest backends would not return.
        cpu.fetch(UVA);
        assert!(matches!(
            cpu.try_fetch(UVA + 1),
            Err(SimFault::NotRet { byte: 0, .. })
        ));
    })
    .unwrap();
}

/// A non-canonical address is #GP(0) before any lookup, even when its canonical twin is
/// mapped and cached: the TLB and the walk index only bits 12..47, so without the check they
/// would translate it through the twin.
#[test]
fn a_non_canonical_address_is_general_protection_before_the_tlb() {
    run(&cfg(1, 23), |cpu| {
        let gva = direct_map(cpu.shared_page());
        cpu.write_u64(gva, u64::from(shadowlab_workloads::RET));
        cpu.fetch(gva);
        let twin = gva ^ (0xffff << 48);
        assert!(!shadowlab_abi::layout::is_canonical(twin));
        let (before, faults) = (cpu.stats(), cpu.vm().mmu().stats().faults);
        assert_eq!(
            guest_fault(cpu.try_read_u64(twin)),
            GuestFault::non_canonical(twin)
        );
        assert_eq!(
            guest_fault(cpu.try_write_u64(twin, 1)),
            GuestFault::non_canonical(twin)
        );
        assert_eq!(
            guest_fault(cpu.try_fetch(twin)),
            GuestFault::non_canonical(twin)
        );
        let after = cpu.stats();
        assert_eq!(
            (after.tlb_hits, after.walks, after.shadow_faults),
            (before.tlb_hits, before.walks, before.shadow_faults),
            "the TLB and the shadow walk were never consulted"
        );
        assert_eq!(cpu.vm().mmu().stats().faults, faults);
        assert_eq!(cpu.read_u64(gva), u64::from(shadowlab_workloads::RET));
    })
    .unwrap();
}
