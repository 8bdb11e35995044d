//! What each policy compiles to: the lockless check's fast path, decoded from a built
//! `shadowlab-vmm` binary.
//!
//! The policy's `is_unsync_root` is `#[inline(always)]` and generic, so in a worker it exists
//! only inside the monomorphised `Mmu<P>::kvm_mmu_sync_roots` (KVM's function of the same
//! name). We find that function (and `is_unsync_root`, should a build ever keep it out of line)
//! in the ELF symbol table with the `object` crate, demangle the names with `rustc-demangle`,
//! take the function's bytes from its section, and decode them with iced-x86's formatter.
//!
//! **Where the fast path ends.** Decoding is linear from the function's entry and stops after
//! the first instruction that leaves the function's straight-line lockless code: a near `call`
//! (in every build so far the MMU lock's `write`, i.e. the slow path; `always-lock` reaches it
//! right after the root lookup), a `ret`, an unconditional `jmp` (a tail call or a jump out), or
//! a trap (`ud2`/`int3`), with one exception below. The conditional branches before that point are the "no root" test,
//! the bounds check of the shadow-page index (to a panic) and the lockless check's own skip to
//! the early return; each is printed with its target as an offset in the function. A hard cap
//! ([`MAX_INSTRUCTIONS`]) stops a decode that never meets such an instruction.
//!
//! A `ret` or unconditional `jmp` does not end it while an earlier conditional branch of the
//! decoded code lands beyond it: `unsync || unsync_children` may compile to a branch over an
//! early return, and the code after that return is still the check. A `call` always ends it.
//!
//! Everything printed is relative to the function's start (offsets, branch targets) and names
//! are demangled without their hash, so the listing depends on the toolchain, the lock file and
//! the source, not on where a binary was linked. It does depend on the toolchain: the listing
//! records the `rustc` that built the binary (its ELF `.comment`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use iced_x86::{
    Decoder, DecoderOptions, FastFormatter, FlowControl, Instruction, Mnemonic, OpKind,
    SymbolResolver, SymbolResult,
};
use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

/// The names (last path segment, demangled) of the functions that hold the lockless check.
pub const CHECK_FUNCTIONS: [&str; 2] = ["kvm_mmu_sync_roots", "is_unsync_root"];

/// Decoding stops after this many instructions even if no call/ret/jmp was met.
pub const MAX_INSTRUCTIONS: usize = 96;

/// Why a binary could not be disassembled.
#[derive(Debug, thiserror::Error)]
pub enum DisasmError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The binary.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not an object file `object` can parse.
    #[error("{path} is not an ELF binary: {source}")]
    Parse {
        /// The binary.
        path: PathBuf,
        /// The parse error.
        source: object::Error,
    },
    /// Not x86-64.
    #[error("{path} is not an x86-64 binary ({arch})")]
    Arch {
        /// The binary.
        path: PathBuf,
        /// The architecture found.
        arch: String,
    },
    /// No symbol matched (a stripped binary, or the function was inlined everywhere).
    #[error("{path}: no function named {wanted} in the symbol table (stripped, or inlined away?)")]
    NotFound {
        /// The binary.
        path: PathBuf,
        /// The names looked for.
        wanted: String,
    },
    /// A symbol's bytes lie outside its section.
    #[error("{path}: the bytes of {function} are not in its section")]
    Bytes {
        /// The binary.
        path: PathBuf,
        /// The function.
        function: String,
    },
}

/// A function found in the symbol table, with its code.
#[derive(Clone, Debug)]
pub struct Function {
    /// Demangled name without the hash (`{:#}` of rustc-demangle).
    pub name: String,
    /// Its address in the binary.
    pub address: u64,
    /// Its bytes (`st_size` of them).
    pub bytes: Vec<u8>,
}

/// One decoded instruction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// Offset from the function's entry.
    pub offset: u64,
    /// The instruction's bytes, with `None` for the relative displacement of a call or jump
    /// that leaves the function: it depends on where the linker put the target, which any
    /// unrelated change of the binary moves, while the target itself is named in `text`.
    pub bytes: Vec<Option<u8>>,
    /// Intel syntax from iced-x86's fast formatter; branch targets as `<+0x..>` or a name.
    pub text: String,
    /// A memory-ordering instruction: a fence, a `lock`-prefixed one, or `xchg` with memory.
    pub barrier: bool,
}

/// How the decoded fast path ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// At a near call (the lock, in every build so far).
    Call,
    /// At a return.
    Ret,
    /// At an unconditional jump.
    Jump,
    /// At a trap (`ud2`, `int3`).
    Trap,
    /// The function's bytes ran out.
    OutOfBytes,
    /// [`MAX_INSTRUCTIONS`] reached.
    Cap,
}

impl End {
    /// How the listing says it.
    pub fn describe(self) -> &'static str {
        match self {
            End::Call => "the first call (the slow path starts here)",
            End::Ret => "a return",
            End::Jump => "an unconditional jump",
            End::Trap => "a trap",
            End::OutOfBytes => "the end of the function",
            End::Cap => "the instruction cap",
        }
    }
}

/// The fast path of one function.
#[derive(Clone, Debug)]
pub struct FastPath {
    /// The function's demangled name.
    pub function: String,
    /// The function's size in bytes.
    pub size: usize,
    /// The decoded instructions, entry first.
    pub lines: Vec<Line>,
    /// Where decoding stopped.
    pub end: End,
}

impl FastPath {
    /// The instructions as text only (for comparing two builds).
    pub fn texts(&self) -> Vec<&str> {
        self.lines.iter().map(|l| l.text.as_str()).collect()
    }
}

/// A binary's lockless check, decoded.
#[derive(Clone, Debug)]
pub struct BinaryListing {
    /// The compiler that built it, from the ELF `.comment` section (`rustc version ...`).
    pub compiler: Option<String>,
    /// Every matching function, by name.
    pub paths: Vec<FastPath>,
}

/// Demangles a symbol name to its hash-free form (`a::b::c`); non-Rust names stay as they are.
pub fn demangle(name: &str) -> String {
    match rustc_demangle::try_demangle(name) {
        Ok(d) => format!("{d:#}"),
        Err(_) => name.to_string(),
    }
}

/// Whether a demangled name is one of `wanted` (its last `::` segment, or the whole name).
fn matches(name: &str, wanted: &[&str]) -> bool {
    wanted
        .iter()
        .any(|w| name == *w || name.strip_suffix(w).is_some_and(|p| p.ends_with("::")))
}

/// What [`functions_in`] finds in one binary.
struct Found {
    /// The functions named `wanted`.
    functions: Vec<Function>,
    /// Every function symbol's address → demangled name (to name call targets).
    names: BTreeMap<u64, String>,
    /// The `rustc version ...` line of `.comment`.
    compiler: Option<String>,
}

/// Parses the ELF file's bytes and finds the function symbols named `wanted`.
fn functions_in(path: &Path, data: &[u8], wanted: &[&str]) -> Result<Found, DisasmError> {
    let file = object::File::parse(data).map_err(|source| DisasmError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    if file.architecture() != object::Architecture::X86_64 {
        return Err(DisasmError::Arch {
            path: path.to_path_buf(),
            arch: format!("{:?}", file.architecture()),
        });
    }
    let mut names = BTreeMap::new();
    let mut found = Vec::new();
    for sym in file.symbols() {
        if sym.kind() != SymbolKind::Text || sym.size() == 0 {
            continue;
        }
        let Ok(raw) = sym.name() else { continue };
        let name = demangle(raw);
        names.insert(sym.address(), name.clone());
        if !matches(&name, wanted) {
            continue;
        }
        let bytes = sym
            .section_index()
            .and_then(|i| file.section_by_index(i).ok())
            .and_then(|s| s.data_range(sym.address(), sym.size()).ok().flatten())
            .ok_or_else(|| DisasmError::Bytes {
                path: path.to_path_buf(),
                function: name.clone(),
            })?;
        found.push(Function {
            name,
            address: sym.address(),
            bytes: bytes.to_vec(),
        });
    }
    if found.is_empty() {
        return Err(DisasmError::NotFound {
            path: path.to_path_buf(),
            wanted: wanted.join(" / "),
        });
    }
    // One entry per function (a symbol can be listed twice, e.g. local and global aliases).
    found.sort_by(|a, b| a.name.cmp(&b.name).then(a.address.cmp(&b.address)));
    found.dedup_by(|a, b| a.address == b.address);
    let compiler = file
        .section_by_name(".comment")
        .and_then(|s| s.data().ok())
        .and_then(|d| {
            d.split(|&b| b == 0)
                .filter_map(|s| std::str::from_utf8(s).ok())
                .find(|s| s.starts_with("rustc version"))
                .map(str::to_string)
        });
    Ok(Found {
        functions: found,
        names,
        compiler,
    })
}

/// Names branch targets: inside the function as `<+0x..>`, elsewhere by demangled symbol.
struct Targets {
    start: u64,
    end: u64,
    /// Owned: iced-x86 keeps the resolver as a `Box<dyn SymbolResolver>` (`'static`).
    names: BTreeMap<u64, String>,
}

impl SymbolResolver for Targets {
    fn symbol(
        &mut self,
        instruction: &Instruction,
        _operand: u32,
        _instruction_operand: Option<u32>,
        address: u64,
        _address_size: u32,
    ) -> Option<SymbolResult<'_>> {
        let is_branch = matches!(
            instruction.op0_kind(),
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
        );
        if !is_branch || address != instruction.near_branch_target() {
            return None;
        }
        let text = if (self.start..self.end).contains(&address) {
            format!("<+{:#x}>", address - self.start)
        } else if let Some(name) = self.names.get(&address) {
            format!("<{name}>")
        } else {
            format!("<{:+#x}>", address as i64 - self.start as i64)
        };
        Some(SymbolResult::with_string(address, text))
    }
}

/// A memory-ordering instruction on x86-64.
fn is_barrier(i: &Instruction) -> bool {
    matches!(
        i.mnemonic(),
        Mnemonic::Mfence | Mnemonic::Lfence | Mnemonic::Sfence
    ) || i.has_lock_prefix()
        || (i.mnemonic() == Mnemonic::Xchg
            && (0..i.op_count()).any(|k| i.op_kind(k) == OpKind::Memory))
}

/// Decodes `f`'s fast path (see the module doc for where it ends). `names` names call targets.
pub fn fast_path(f: &Function, names: &BTreeMap<u64, String>) -> FastPath {
    let resolver = Targets {
        start: f.address,
        end: f.address + f.bytes.len() as u64,
        names: names.clone(),
    };
    let mut fmt = FastFormatter::try_with_options(Some(Box::new(resolver)))
        .expect("the fast formatter accepts a symbol resolver");
    fmt.options_mut().set_use_hex_prefix(true);
    fmt.options_mut().set_uppercase_hex(false);
    fmt.options_mut().set_space_after_operand_separator(true);
    let mut decoder = Decoder::with_ip(64, &f.bytes, f.address, DecoderOptions::NONE);
    let mut lines = Vec::new();
    let mut end = End::OutOfBytes;
    let mut instr = Instruction::default();
    let mut furthest_forward_target = 0u64;
    while decoder.can_decode() {
        if lines.len() == MAX_INSTRUCTIONS {
            end = End::Cap;
            break;
        }
        decoder.decode_out(&mut instr);
        let offset = instr.ip() - f.address;
        let mut text = String::new();
        fmt.format(&instr, &mut text);
        let start = offset as usize;
        let mut bytes: Vec<Option<u8>> = f.bytes[start..start + instr.len()]
            .iter()
            .map(|&b| Some(b))
            .collect();
        let leaves = matches!(
            instr.flow_control(),
            FlowControl::Call | FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch
        ) && !instr.is_ip_rel_memory_operand()
            && instr.near_branch_target() != 0
            && !(f.address..f.address + f.bytes.len() as u64).contains(&instr.near_branch_target());
        if leaves {
            let co = decoder.get_constant_offsets(&instr);
            if co.has_immediate() {
                let (at, len) = (co.immediate_offset(), co.immediate_size());
                for b in bytes.iter_mut().skip(at).take(len) {
                    *b = None;
                }
            }
        }
        lines.push(Line {
            offset,
            bytes,
            text,
            barrier: is_barrier(&instr),
        });
        // A return or jump ends the path unless an earlier conditional branch of the check
        // lands after it (`a || b` compiles to a branch over the first early return).
        let pending = furthest_forward_target >= instr.next_ip();
        let stop = match instr.flow_control() {
            FlowControl::Call | FlowControl::IndirectCall => Some(End::Call),
            FlowControl::Return if !pending => Some(End::Ret),
            FlowControl::UnconditionalBranch | FlowControl::IndirectBranch if !pending => {
                Some(End::Jump)
            }
            FlowControl::Exception | FlowControl::Interrupt => Some(End::Trap),
            FlowControl::ConditionalBranch => {
                let t = instr.near_branch_target();
                if t < f.address + f.bytes.len() as u64 {
                    furthest_forward_target = furthest_forward_target.max(t);
                }
                None
            }
            _ => None,
        };
        if let Some(s) = stop {
            end = s;
            break;
        }
    }
    FastPath {
        function: f.name.clone(),
        size: f.bytes.len(),
        lines,
        end,
    }
}

/// The lockless check of the binary at `path`: every [`CHECK_FUNCTIONS`] symbol, decoded.
pub fn listing(path: &Path) -> Result<BinaryListing, DisasmError> {
    listing_of(path, &CHECK_FUNCTIONS)
}

/// [`listing`] for other function names (the tests use a fixture of their own).
pub fn listing_of(path: &Path, wanted: &[&str]) -> Result<BinaryListing, DisasmError> {
    let data = std::fs::read(path).map_err(|source| DisasmError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let found = functions_in(path, &data, wanted)?;
    Ok(BinaryListing {
        compiler: found.compiler,
        paths: found
            .functions
            .iter()
            .map(|f| fast_path(f, &found.names))
            .collect(),
    })
}

/// One policy's listing, for the report.
#[derive(Clone, Debug)]
pub struct PolicyListing {
    /// The policy's name.
    pub policy: &'static str,
    /// Its decoded check.
    pub listing: BinaryListing,
}

/// Policies whose fast paths are the same instructions, in the order given.
pub fn identical_groups(all: &[PolicyListing]) -> Vec<Vec<&'static str>> {
    let mut groups: Vec<(Vec<Vec<&str>>, Vec<&'static str>)> = Vec::new();
    for p in all {
        let key: Vec<Vec<&str>> = p.listing.paths.iter().map(FastPath::texts).collect();
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, members)) => members.push(p.policy),
            None => groups.push((key, vec![p.policy])),
        }
    }
    groups.into_iter().map(|(_, m)| m).collect()
}

fn same(groups: &[Vec<&'static str>], a: &str, b: &str) -> bool {
    groups.iter().any(|g| g.contains(&a) && g.contains(&b))
}

fn hex_bytes(b: &[Option<u8>]) -> String {
    b.iter()
        .map(|x| x.map_or_else(|| "..".to_string(), |x| format!("{x:02x}")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn barriers(p: &PolicyListing) -> Vec<&str> {
    p.listing
        .paths
        .iter()
        .flat_map(|f| f.lines.iter())
        .filter(|l| l.barrier)
        .map(|l| l.text.as_str())
        .collect()
}

/// The sentences both renderings share: which builds are the same code, the barriers each
/// fast path holds, and the architectural note.
fn findings(all: &[PolicyListing]) -> Vec<String> {
    let groups = identical_groups(all);
    let mut out = Vec::new();
    for g in groups.iter().filter(|g| g.len() > 1) {
        out.push(format!(
            "Identical instructions on x86-64: {}.",
            g.iter()
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for p in all {
        let b = barriers(p);
        out.push(if b.is_empty() {
            format!(
                "`{}`: no fence or locked instruction on the fast path.",
                p.policy
            )
        } else {
            format!(
                "`{}`: ordering instructions on the fast path: {}.",
                p.policy,
                b.iter()
                    .map(|t| format!("`{t}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        });
    }
    let both = all.iter().any(|p| p.policy == "acquire-load")
        && all.iter().any(|p| p.policy == "rmb-fence");
    if both {
        out.push(if same(&groups, "acquire-load", "rmb-fence") {
            "On x86-64 an acquire load is a plain `mov` and an acquire fence (`smp_rmb()`) emits no \
             instruction (TSO), so `acquire-load` and `rmb-fence` are the same instructions, as \
             decoded above. AArch64 is where they differ in code: `acquire-load` is two `ldar` \
             (load-acquire), `rmb-fence` is `dmb ishld` followed by two plain `ldr`."
                .to_string()
        } else {
            "`acquire-load` and `rmb-fence` decode to different instructions in these builds (an \
             acquire load and an acquire fence need none on x86-64 under TSO; the difference is \
             the compiler's, not the architecture's). AArch64 is where they differ by \
             construction: `acquire-load` is two `ldar`, `rmb-fence` is `dmb ishld` then two \
             plain `ldr`."
                .to_string()
        });
    }
    out
}

fn compiler_line(all: &[PolicyListing]) -> String {
    let mut c: Vec<&str> = all
        .iter()
        .map(|p| p.listing.compiler.as_deref().unwrap_or("unknown compiler"))
        .collect();
    c.sort_unstable();
    c.dedup();
    c.join("; ")
}

/// The Markdown listing (for the README and `paper/generated/compiles-to.md`).
pub fn render_markdown(all: &[PolicyListing]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<!-- generated by `shadowlab report` from the policy builds of shadowlab-vmm; do not edit -->\n"
    );
    let _ = writeln!(s, "# What each policy compiles to (x86-64)\n");
    let _ = writeln!(
        s,
        "The lockless check's fast path in each policy build of `shadowlab-vmm`, decoded with \
         iced-x86 from the binary: from the entry of the monomorphised `kvm_mmu_sync_roots` to \
         the first instruction that leaves the lockless path (a call, return or jump). Offsets \
         are from the function's entry. Built by {}.\n",
        compiler_line(all)
    );
    for line in findings(all) {
        let _ = writeln!(s, "- {line}");
    }
    for p in all {
        let _ = writeln!(s, "\n## `{}`\n", p.policy);
        for f in &p.listing.paths {
            let _ = writeln!(
                s,
                "`{}` ({} bytes; listed up to {}, {} instructions):\n",
                f.function,
                f.size,
                f.end.describe(),
                f.lines.len()
            );
            let _ = writeln!(s, "```text");
            for l in &f.lines {
                let _ = writeln!(
                    s,
                    "+{:#06x}  {:<30} {}{}",
                    l.offset,
                    hex_bytes(&l.bytes),
                    l.text,
                    if l.barrier { "    ; <- barrier" } else { "" }
                );
            }
            let _ = writeln!(s, "```");
        }
    }
    s
}

/// Escapes text for LaTeX prose (not for verbatim).
pub fn latex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\textbackslash{}"),
            '&' | '%' | '$' | '#' | '_' | '{' | '}' => {
                out.push('\\');
                out.push(c);
            }
            '~' => out.push_str("\\textasciitilde{}"),
            '^' => out.push_str("\\textasciicircum{}"),
            '<' => out.push_str("\\textless{}"),
            '>' => out.push_str("\\textgreater{}"),
            _ => out.push(c),
        }
    }
    out
}

/// Markdown `code` spans to `\texttt{}`, the rest escaped.
fn md_to_latex(s: &str) -> String {
    s.split('`')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 {
                format!("\\texttt{{{}}}", latex_escape(part))
            } else {
                latex_escape(part)
            }
        })
        .collect()
}

/// The LaTeX listing (`paper/generated/compiles-to.tex`): needs the `listings` package.
pub fn render_latex(all: &[PolicyListing]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "% generated by `shadowlab report` from the policy builds of shadowlab-vmm; do not edit"
    );
    let _ = writeln!(
        s,
        "The lockless check's fast path in each policy build, decoded with iced-x86 from the \
         binary: from the entry of the monomorphised \\texttt{{kvm\\_mmu\\_sync\\_roots}} to the \
         first instruction that leaves the lockless path (a call, return or jump). Offsets are \
         from the function's entry. Built by {}.",
        latex_escape(&compiler_line(all))
    );
    let _ = writeln!(s, "\\begin{{itemize}}");
    for line in findings(all) {
        let _ = writeln!(s, "\\item {}", md_to_latex(&line));
    }
    let _ = writeln!(s, "\\end{{itemize}}");
    for p in all {
        for f in &p.listing.paths {
            let _ = writeln!(
                s,
                "\\paragraph{{\\texttt{{{}}}}} {} bytes; listed up to {}, {} instructions.",
                latex_escape(p.policy),
                f.size,
                latex_escape(f.end.describe()),
                f.lines.len()
            );
            let _ = writeln!(
                s,
                "\\begin{{lstlisting}}[basicstyle=\\ttfamily\\scriptsize,breaklines=true,columns=fullflexible,keepspaces=true]"
            );
            // The function's (long, generic) name as the listing's first line: lstlisting
            // breaks it where a paragraph could not.
            let _ = writeln!(s, "; {}", f.function);
            for l in &f.lines {
                let _ = writeln!(
                    s,
                    "+{:#06x}  {}{}",
                    l.offset,
                    l.text,
                    if l.barrier { "    ; <- barrier" } else { "" }
                );
            }
            let _ = writeln!(s, "\\end{{lstlisting}}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use shadowlab_policies::{HostMemory, RmbFence, SyncPolicy, UnsyncFlags};
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    #[test]
    fn decodes_a_known_byte_sequence_back() {
        // movzx eax, byte ptr [rdi+0x5d]; test al, al; jne +0x..; mfence;
        // lock xadd [rax], esi; call <elsewhere>; (never reached:) ret
        let bytes = vec![
            0x0f, 0xb6, 0x47, 0x5d, // movzx eax, byte ptr [rdi+0x5d]
            0x84, 0xc0, // test al, al
            0x75, 0x0c, // jne +0x14
            0x0f, 0xae, 0xf0, // mfence
            0xf0, 0x0f, 0xc1, 0x30, // lock xadd [rax], esi
            0xe8, 0x00, 0x10, 0x00, 0x00, // call +0x1014
            0xc3, // ret
        ];
        let f = Function {
            name: "t::kvm_mmu_sync_roots".into(),
            address: 0x1000,
            bytes,
        };
        let mut names = BTreeMap::new();
        names.insert(0x1000 + 0x14 + 0x1000, "shadowlab::lock::write".to_string());
        let p = fast_path(&f, &names);
        assert_eq!(
            p.texts(),
            vec![
                "movzx eax, byte ptr [rdi+0x5d]",
                "test al, al",
                "jne <+0x14>",
                "mfence",
                "lock xadd [rax], esi",
                "call <shadowlab::lock::write>",
            ]
        );
        assert_eq!(
            p.end,
            End::Call,
            "stops at the call, not at the ret behind it"
        );
        let barriers: Vec<bool> = p.lines.iter().map(|l| l.barrier).collect();
        assert_eq!(barriers, vec![false, false, false, true, true, false]);
        assert_eq!(p.lines[3].offset, 8);
        assert_eq!(p.lines[3].bytes, vec![Some(0x0f), Some(0xae), Some(0xf0)]);
    }

    #[test]
    fn an_early_return_that_a_branch_jumps_over_does_not_end_the_path() {
        // unsync || unsync_children, as rustc emits it out of line
        let bytes = vec![
            0x0f, 0xb6, 0x4f, 0x04, // movzx ecx, byte ptr [rdi+0x4]
            0xb0, 0x01, // mov al, 0x1
            0x84, 0xc9, // test cl, cl
            0x74, 0x01, // je +0xb
            0xc3, // ret
            0x8b, 0x07, // mov eax, [rdi]
            0x85, 0xc0, // test eax, eax
            0x0f, 0x95, 0xc0, // setne al
            0xc3, // ret
            0xcc, // int3 (padding: not reached)
        ];
        let f = Function {
            name: "t::is_unsync_root".into(),
            address: 0x4000,
            bytes,
        };
        let p = fast_path(&f, &BTreeMap::new());
        assert_eq!(
            p.texts(),
            vec![
                "movzx ecx, byte ptr [rdi+0x4]",
                "mov al, 0x1",
                "test cl, cl",
                "je <+0xb>",
                "ret",
                "mov eax, [rdi]",
                "test eax, eax",
                "setne al",
                "ret",
            ]
        );
        assert_eq!(p.end, End::Ret);
    }

    #[test]
    fn demangles_without_the_hash() {
        assert_eq!(
            demangle("_ZN19shadowlab_framework3mmu4sync18kvm_mmu_sync_roots17hf777f0a89e93f4a3E"),
            "shadowlab_framework::mmu::sync::kvm_mmu_sync_roots"
        );
        assert!(matches(
            "shadowlab_framework::mmu::sync::<impl shadowlab_framework::mmu::Mmu<P>>::kvm_mmu_sync_roots",
            &CHECK_FUNCTIONS
        ));
        assert!(!matches("a::not_kvm_mmu_sync_roots", &CHECK_FUNCTIONS));
    }

    struct Flags {
        unsync: AtomicBool,
        children: AtomicU32,
    }

    impl UnsyncFlags for Flags {
        fn load_unsync(&self, order: Ordering) -> bool {
            self.unsync.load(order)
        }
        fn load_unsync_children(&self, order: Ordering) -> u32 {
            self.children.load(order)
        }
    }

    /// The rmb-fence check, kept out of line under a name of its own so that the test binary
    /// holds a symbol to find.
    #[inline(never)]
    fn shadowlab_fixture_is_unsync_root(f: &Flags) -> bool {
        RmbFence::is_unsync_root(&HostMemory, f)
    }

    #[test]
    fn finds_and_decodes_the_check_in_this_test_binary() {
        let f = Flags {
            unsync: AtomicBool::new(false),
            children: AtomicU32::new(std::hint::black_box(3)),
        };
        assert!(std::hint::black_box(shadowlab_fixture_is_unsync_root)(&f));
        let exe = std::env::current_exe().expect("the test binary's path");
        let l = listing_of(&exe, &["shadowlab_fixture_is_unsync_root"]).expect("found");
        assert_eq!(l.paths.len(), 1);
        let p = &l.paths[0];
        assert!(p
            .function
            .ends_with("tests::shadowlab_fixture_is_unsync_root"));
        // Both flags are loaded from memory (a byte and a dword), no fence is emitted on
        // x86-64 for the acquire fence, and the function returns.
        let texts = p.texts().join("\n");
        assert!(texts.contains("byte ptr ["), "{texts}");
        assert!(
            texts.contains("mov eax, [rdi]") || texts.contains("dword ptr ["),
            "{texts}"
        );
        assert!(p.lines.iter().all(|l| !l.barrier), "{texts}");
        assert_eq!(p.end, End::Ret, "{texts}");
        assert!(l
            .compiler
            .as_deref()
            .unwrap_or("")
            .starts_with("rustc version"));
    }

    /// On the real worker builds: the check is found, and the fast path ends where the module
    /// doc says, at the call of the MMU lock's `write`; only seqcst-fence holds an ordering
    /// instruction before it.
    #[test]
    fn in_every_policy_build_the_fast_path_ends_at_the_mmu_lock() {
        let root = crate::report::workspace_root();
        let mut builds = vec![(
            "rmb-fence".to_string(),
            root.join("target/release/shadowlab-vmm"),
        )];
        for p in shadowlab_policies::ALL {
            builds.push((
                p.name.to_string(),
                root.join("target/policy-builds/bin")
                    .join(p.name)
                    .join("shadowlab-vmm"),
            ));
        }
        let mut checked = 0;
        for (policy, bin) in builds {
            if !bin.exists() {
                println!("SKIPPED {policy}: no build at {}", bin.display());
                continue;
            }
            assert_eq!(crate::worker::policy_of(&bin).unwrap(), policy);
            let l = listing(&bin).unwrap();
            assert!(
                l.paths
                    .iter()
                    .any(|f| f.function.ends_with("::kvm_mmu_sync_roots")),
                "{policy}"
            );
            for f in &l.paths {
                let last = f.lines.last().unwrap();
                assert_eq!(f.end, End::Call, "{policy}: {}", last.text);
                assert!(
                    last.text.contains("MmuLock<T>::write"),
                    "{policy}: {}",
                    last.text
                );
                let barriers = f.lines.iter().filter(|l| l.barrier).count();
                assert_eq!(barriers, usize::from(policy == "seqcst-fence"), "{policy}");
            }
            checked += 1;
        }
        assert!(
            checked > 0 || std::env::var_os("CI").is_none(),
            "no worker build found (build one: cargo build --release)"
        );
        println!("checked {checked} builds");
    }

    #[test]
    fn a_missing_function_and_a_non_elf_are_one_line_errors() {
        let exe = std::env::current_exe().expect("the test binary's path");
        let e = listing_of(&exe, &["no_such_function_anywhere"]).unwrap_err();
        assert!(matches!(e, DisasmError::NotFound { .. }));
        assert_eq!(e.to_string().lines().count(), 1);
        let dir = std::env::temp_dir().join(format!("shadowlab-disasm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk");
        std::fs::write(&junk, b"not an object file").unwrap();
        let e = listing(&junk).unwrap_err();
        assert!(matches!(e, DisasmError::Parse { .. }), "{e}");
        let e = listing(&dir.join("absent")).unwrap_err();
        assert!(matches!(e, DisasmError::Read { .. }), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
