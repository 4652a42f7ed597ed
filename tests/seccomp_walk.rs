//! The walk over every system call number: the compiled seccomp filter,
//! the very BPF program the sandbox hands every run
//! (`sandbox::seccomp::default_program`), is run here by a small classic-BPF
//! interpreter over `struct seccomp_data`, for every number of the x86_64,
//! x32 and i386 system call tables (and the numbers around them), and its
//! answer is compared to Docker's default profile as listed in
//! `tests/fixtures/seccomp/docker-default-x86_64.txt`. System calls are
//! named by the `syscalls` crate's tables (the x32 ABI from the kernel's
//! `syscall_64.tbl`, below); nothing here reads our own profile
//! (`src/sandbox/seccomp_profile.rs`).
//!
//! - A system call the fixture does not allow fails with EPERM (`clone3`:
//!   ENOSYS, so that C libraries fall back to `clone`; newer calls may fail
//!   with ENOSYS too), whatever its arguments.
//! - One the fixture allows is allowed, unless the README's Security
//!   section names it as refused on purpose (then it must be refused).
//! - The fixture's argument rules hold: `socket` for every family but
//!   AF_VSOCK, `personality` with Docker's personas only, `clone` without
//!   namespace flags.
//! - Numbers that name no system call are refused; other architectures are
//!   killed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use compute_worker::sandbox::seccomp::default_program;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const SECCOMP_RET_ACTION_FULL: u32 = 0xffff_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_KILL_THREAD: u32 = 0;

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// The x32 ABI's own entries, numbers 512 on (arch/x86/entry/syscalls/
/// syscall_64.tbl, "x32" lines; unchanged since Linux 5.4).
const X32_ONLY: [&str; 36] = [
    "rt_sigaction",
    "rt_sigreturn",
    "ioctl",
    "readv",
    "writev",
    "recvfrom",
    "sendmsg",
    "recvmsg",
    "execve",
    "ptrace",
    "rt_sigpending",
    "rt_sigtimedwait",
    "rt_sigqueueinfo",
    "sigaltstack",
    "timer_create",
    "mq_notify",
    "kexec_load",
    "waitid",
    "set_robust_list",
    "get_robust_list",
    "vmsplice",
    "move_pages",
    "preadv",
    "pwritev",
    "rt_tgsigqueueinfo",
    "recvmmsg",
    "sendmmsg",
    "process_vm_readv",
    "process_vm_writev",
    "setsockopt",
    "getsockopt",
    "io_setup",
    "io_submit",
    "execveat",
    "preadv2",
    "pwritev2",
];

/// The "64" lines of syscall_64.tbl below 512 that are not in `X32_ONLY`:
/// no system call for an x32 caller.
const SIXTY_FOUR_ONLY: [&str; 11] = [
    "uselib",
    "_sysctl",
    "create_module",
    "get_kernel_syms",
    "query_module",
    "nfsservctl",
    "set_thread_area",
    "get_thread_area",
    "epoll_ctl_old",
    "epoll_wait_old",
    "vserver",
];

/// How far past each table's last number the walk goes.
const BEYOND: u32 = 1024;

// ---------------------------------------------------------------------------
// A classic-BPF interpreter, as the kernel runs a seccomp filter.

/// `struct seccomp_data`, laid out as the kernel does (little-endian).
struct SeccompData {
    nr: u32,
    arch: u32,
    args: [u64; 6],
}

impl SeccompData {
    fn bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0..4].copy_from_slice(&self.nr.to_ne_bytes());
        b[4..8].copy_from_slice(&self.arch.to_ne_bytes());
        b[8..16].copy_from_slice(&0x7fff_0000_1234u64.to_ne_bytes());
        for (i, a) in self.args.iter().enumerate() {
            b[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        b
    }
}

struct Insn {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

fn decode(program: &[u8]) -> Vec<Insn> {
    assert!(!program.is_empty() && program.len() % 8 == 0);
    program
        .chunks_exact(8)
        .map(|c| Insn {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect()
}

/// Runs `prog` over `data` and returns the filter's return value. Panics on
/// what the kernel's checker would refuse (out-of-range loads or jumps,
/// unknown instructions, running off the end).
fn run(prog: &[Insn], data: &SeccompData) -> u32 {
    let data = data.bytes();
    let (mut a, mut x) = (0u32, 0u32);
    let mut mem = [0u32; 16];
    let mut pc = 0usize;
    loop {
        let i = prog.get(pc).expect("the program runs off its end");
        pc += 1;
        let src = if i.code & 0x08 != 0 { x } else { i.k };
        match i.code & 0x07 {
            // BPF_LD
            0x00 => {
                a = match i.code & 0xe0 {
                    0x20 => {
                        // BPF_ABS, 32-bit and aligned only (seccomp).
                        assert_eq!(i.code & 0x18, 0x00, "seccomp loads words only");
                        let k = i.k as usize;
                        assert!(k % 4 == 0 && k + 4 <= data.len(), "load at {k}");
                        u32::from_ne_bytes(data[k..k + 4].try_into().unwrap())
                    }
                    0x00 => i.k,               // BPF_IMM
                    0x60 => mem[i.k as usize], // BPF_MEM
                    0x80 => data.len() as u32, // BPF_LEN
                    m => panic!("BPF_LD mode {m:#x}"),
                }
            }
            // BPF_LDX
            0x01 => {
                x = match i.code & 0xe0 {
                    0x00 => i.k,
                    0x60 => mem[i.k as usize],
                    0x80 => data.len() as u32,
                    m => panic!("BPF_LDX mode {m:#x}"),
                }
            }
            0x02 => mem[i.k as usize] = a, // BPF_ST
            0x03 => mem[i.k as usize] = x, // BPF_STX
            // BPF_ALU
            0x04 => {
                a = match i.code & 0xf0 {
                    0x00 => a.wrapping_add(src),
                    0x10 => a.wrapping_sub(src),
                    0x20 => a.wrapping_mul(src),
                    0x30 => a.checked_div(src).expect("division by zero"),
                    0x40 => a | src,
                    0x50 => a & src,
                    0x60 => a.checked_shl(src).unwrap_or(0),
                    0x70 => a.checked_shr(src).unwrap_or(0),
                    0x80 => a.wrapping_neg(),
                    0x90 => a.checked_rem(src).expect("modulo by zero"),
                    0xa0 => a ^ src,
                    op => panic!("BPF_ALU op {op:#x}"),
                }
            }
            // BPF_JMP
            0x05 => {
                let op = i.code & 0xf0;
                if op == 0x00 {
                    pc += i.k as usize; // BPF_JA
                } else {
                    let taken = match op {
                        0x10 => a == src,
                        0x20 => a > src,
                        0x30 => a >= src,
                        0x40 => a & src != 0,
                        op => panic!("BPF_JMP op {op:#x}"),
                    };
                    pc += if taken { i.jt } else { i.jf } as usize;
                }
            }
            // BPF_RET
            0x06 => {
                return match i.code & 0x18 {
                    0x00 => i.k,
                    0x10 => a,
                    r => panic!("BPF_RET source {r:#x}"),
                }
            }
            // BPF_MISC
            _ => match i.code & 0xf8 {
                0x00 => x = a, // TAX
                0x80 => a = x, // TXA
                op => panic!("BPF_MISC op {op:#x}"),
            },
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Allow,
    Errno(u32),
    Kill,
    Other(u32),
}

impl Verdict {
    fn of(ret: u32) -> Verdict {
        match ret & SECCOMP_RET_ACTION_FULL {
            SECCOMP_RET_ALLOW => Verdict::Allow,
            SECCOMP_RET_ERRNO => Verdict::Errno(ret & 0xffff),
            SECCOMP_RET_KILL_PROCESS | SECCOMP_RET_KILL_THREAD => Verdict::Kill,
            _ => Verdict::Other(ret),
        }
    }
    fn refused(self) -> bool {
        matches!(self, Verdict::Errno(EPERM) | Verdict::Errno(ENOSYS))
    }
}

impl fmt::Debug for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Verdict::Allow => write!(f, "allowed"),
            Verdict::Errno(EPERM) => write!(f, "EPERM"),
            Verdict::Errno(ENOSYS) => write!(f, "ENOSYS"),
            Verdict::Errno(e) => write!(f, "errno {e}"),
            Verdict::Kill => write!(f, "killed"),
            Verdict::Other(r) => write!(f, "return {r:#x}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Docker's profile (the fixture) and the README's stricter choices.

/// One argument rule of the fixture: `argN==V`, `argN!=V`, `argN&M==V`.
struct Rule {
    arg: usize,
    mask: u64,
    value: u64,
    equal: bool,
}

impl Rule {
    fn parse(s: &str) -> Rule {
        let (lhs, value, equal) = if let Some((l, v)) = s.split_once("!=") {
            (l, v, false)
        } else {
            let (l, v) = s.split_once("==").unwrap_or_else(|| panic!("rule {s}"));
            (l, v, true)
        };
        let (arg, mask) = match lhs.split_once('&') {
            Some((a, m)) => (a, m.parse().unwrap()),
            None => (lhs, u64::MAX),
        };
        Rule {
            arg: arg.strip_prefix("arg").unwrap().parse().unwrap(),
            mask,
            value: value.parse().unwrap(),
            equal,
        }
    }
    fn holds(&self, args: &[u64; 6]) -> bool {
        (args[self.arg] & self.mask == self.value) == self.equal
    }
}

/// What the fixture allows: unconditionally, or under any of its rules.
struct Docker {
    always: BTreeSet<String>,
    rules: BTreeMap<String, Vec<Rule>>,
}

impl Docker {
    fn load() -> Docker {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/seccomp/docker-default-x86_64.txt");
        let text = std::fs::read_to_string(path).unwrap();
        let mut d = Docker {
            always: BTreeSet::new(),
            rules: BTreeMap::new(),
        };
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let mut f = line.split_whitespace();
            let name = f.next().unwrap().to_string();
            match f.next() {
                None => {
                    d.always.insert(name);
                }
                Some(rule) => d.rules.entry(name).or_default().push(Rule::parse(rule)),
            }
        }
        assert!(d.always.len() > 300, "{} names", d.always.len());
        d
    }

    /// `ints_32`: the ABI's `int` and `long` are 32 bits (i386, x32), and
    /// Docker's rules (libseccomp's) compare the low 32 bits of an argument
    /// there, which is all the kernel reads of `socket`'s family,
    /// `personality`'s persona, and all there is of `clone`'s namespace flags.
    fn allows(&self, name: &str, args: &[u64; 6], ints_32: bool) -> bool {
        let mut args = *args;
        if ints_32 {
            args.iter_mut().for_each(|a| *a &= 0xffff_ffff);
        }
        self.always.contains(name)
            || self
                .rules
                .get(name)
                .is_some_and(|rules| rules.iter().any(|r| r.holds(&args)))
    }
}

/// The system calls Docker allows that the README's Security section says
/// we refuse: the backquoted names after "Stricter than Docker:" in the
/// seccomp row.
fn readme_stricter() -> BTreeSet<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let security = readme
        .split("\n## Security\n")
        .nth(1)
        .expect("README has a Security section");
    let security = security.split("\n## ").next().unwrap();
    let row = security
        .lines()
        .find(|l| l.starts_with("| Seccomp"))
        .expect("the Security section has a Seccomp row");
    let list = row
        .split_once("Stricter than Docker:")
        .expect("the Seccomp row says what is stricter than Docker")
        .1;
    let list = list.split([';', '|']).next().unwrap();
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------
// The tables.

/// One ABI's system calls by number, and how a call of it reaches the filter.
struct Abi {
    name: &'static str,
    arch: u32,
    nr_base: u32,
    by_nr: BTreeMap<u32, &'static str>,
    /// i386's arguments are 32-bit registers.
    args_32: bool,
    /// Its `int` and `long` are 32 bits (i386, x32).
    ints_32: bool,
}

fn abis() -> Vec<Abi> {
    let x86_64: BTreeMap<u32, &'static str> = syscalls::x86_64::Sysno::iter()
        .map(|s| (s.id() as u32, s.name()))
        .collect();
    let i386 = syscalls::x86::Sysno::iter()
        .map(|s| (s.id() as u32, s.name()))
        .collect();
    let mut x32: BTreeMap<u32, &'static str> = x86_64
        .iter()
        .filter(|(_, n)| !X32_ONLY.contains(n) && !SIXTY_FOUR_ONLY.contains(n))
        .map(|(&nr, &n)| (nr, n))
        .collect();
    for (i, n) in X32_ONLY.iter().enumerate() {
        x32.insert(512 + i as u32, n);
    }
    assert!(x86_64.len() > 350 && x32.len() > 350, "tables too short");
    vec![
        Abi {
            name: "x86_64",
            arch: AUDIT_ARCH_X86_64,
            nr_base: 0,
            by_nr: x86_64,
            args_32: false,
            ints_32: false,
        },
        Abi {
            name: "x32",
            arch: AUDIT_ARCH_X86_64,
            nr_base: X32_SYSCALL_BIT,
            by_nr: x32,
            args_32: false,
            ints_32: true,
        },
        Abi {
            name: "i386",
            arch: AUDIT_ARCH_I386,
            nr_base: 0,
            by_nr: i386,
            args_32: true,
            ints_32: true,
        },
    ]
}

/// Argument sets every system call is tried with; those with rules get
/// the values their rules are about on top.
fn argument_sets(name: &str, args_32: bool) -> Vec<[u64; 6]> {
    let wide = if args_32 { 0xffff_ffff } else { u64::MAX };
    let mut firsts: Vec<u64> = vec![0, 1, 0x7fff_ffff, wide];
    match name {
        // Every address family there is, AF_VSOCK (40) among them.
        "socket" => firsts.extend(0..=64),
        // Docker's personas, and others: ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC,
        // PER_BSD, PER_LINUX32|ADDR_LIMIT_32BIT, 0xfffffffe, ...
        "personality" => firsts.extend([
            0x8,
            0x2_0000,
            0x2_0008,
            0xffff_ffff,
            0xffff_fffe,
            0x4_0000,
            0x40_0000,
            0x6,
            0x80_0008,
            0x1_0000_0000,
            0x1_0000_0008,
        ]),
        // A thread, a fork, and each namespace flag (alone and with a
        // thread's flags): CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER,
        // NEWPID, NEWNET, and CLONE_NEWTIME (0x80, in CSIGNAL for clone).
        "clone" => {
            let thread = 0x003d_0f00u64;
            firsts.extend([17, thread, thread | 17, 0x80]);
            for ns in [
                0x2_0000u64,
                0x0200_0000,
                0x0400_0000,
                0x0800_0000,
                0x1000_0000,
                0x2000_0000,
                0x4000_0000,
            ] {
                firsts.extend([ns, ns | 17, ns | thread]);
            }
        }
        _ => {}
    }
    firsts
        .into_iter()
        .filter(|&a0| a0 <= wide)
        .map(|a0| {
            let mut args = [a0, 2, 0, 0x1000, wide, 7];
            for a in &mut args {
                *a &= wide;
            }
            args
        })
        .collect()
}

// ---------------------------------------------------------------------------

#[test]
#[cfg_attr(
    not(all(target_arch = "x86_64", feature = "seccomp")),
    ignore = "needs an x86_64 build with the seccomp feature"
)]
fn every_system_call_number_gets_dockers_answer_or_a_stricter_documented_one() {
    let dir = tempfile::tempdir().unwrap();
    let program = default_program(dir.path())
        .unwrap()
        .expect("a build with the seccomp feature has a filter");
    let prog = decode(&program);
    let docker = Docker::load();
    let stricter = readme_stricter();
    for name in &stricter {
        assert!(
            docker.always.contains(name) || docker.rules.contains_key(name),
            "the README names {name} as stricter than Docker, but Docker does not allow it"
        );
    }

    let mut wrong: Vec<String> = Vec::new();
    let mut seen_allowed = 0usize;
    let mut seen_refused = 0usize;
    let mut refused_allowed_by_docker: BTreeSet<&str> = BTreeSet::new();
    for abi in abis() {
        let last = *abi.by_nr.keys().last().unwrap();
        for n in 0..=last + BEYOND {
            let nr = abi.nr_base + n;
            let name = abi.by_nr.get(&n).copied();
            for args in argument_sets(name.unwrap_or(""), abi.args_32) {
                let got = Verdict::of(run(
                    &prog,
                    &SeccompData {
                        nr,
                        arch: abi.arch,
                        args,
                    },
                ));
                let call = format!(
                    "{} {} (nr {nr:#x}, args {:#x}, {:#x}, ...)",
                    abi.name,
                    name.unwrap_or("<none>"),
                    args[0],
                    args[1]
                );
                let Some(name) = name else {
                    if !got.refused() {
                        wrong.push(format!("{call}: no such system call, but {got:?}"));
                    }
                    continue;
                };
                let docker_allows = docker.allows(name, &args, abi.ints_32);
                let expected_refused = !docker_allows || stricter.contains(name);
                if got == Verdict::Allow {
                    seen_allowed += 1;
                } else {
                    seen_refused += 1;
                }
                if expected_refused {
                    let ok = if name == "clone3" {
                        got == Verdict::Errno(ENOSYS)
                    } else {
                        got.refused()
                    };
                    if !ok {
                        let why = if docker_allows {
                            "the README says we refuse it"
                        } else {
                            "Docker refuses it"
                        };
                        wrong.push(format!("{call}: {why}, but {got:?}"));
                    }
                } else if got != Verdict::Allow {
                    refused_allowed_by_docker.insert(name);
                    wrong.push(format!(
                        "{call}: Docker allows it and the README's Security section names \
                         no stricter choice, but {got:?}"
                    ));
                }
            }
        }
    }
    // Numbers far from every table (the top of the x32 range, the sign
    // bit, -1) are no system call either.
    for arch in [AUDIT_ARCH_X86_64, AUDIT_ARCH_I386] {
        for nr in [
            0x3fff_ffffu32,
            0x7fff_ffff,
            0x8000_0000,
            0xbfff_ffff,
            0xffff_ffff,
        ] {
            let got = Verdict::of(run(
                &prog,
                &SeccompData {
                    nr,
                    arch,
                    args: [0; 6],
                },
            ));
            if !got.refused() {
                wrong.push(format!(
                    "arch {arch:#x} nr {nr:#x}: no system call, but {got:?}"
                ));
            }
        }
    }
    // Other architectures do not get in at all.
    for arch in [
        0xc000_00b7u32, /* aarch64 */
        0x4000_0028,    /* arm */
        0,
    ] {
        for nr in [0u32, 1, 59, 41] {
            let got = Verdict::of(run(
                &prog,
                &SeccompData {
                    nr,
                    arch,
                    args: [0; 6],
                },
            ));
            if got != Verdict::Kill {
                wrong.push(format!("arch {arch:#x} nr {nr}: {got:?}, not killed"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} answers differ from Docker's profile (refused although Docker allows: {:?}):\n{}",
        wrong.len(),
        refused_allowed_by_docker,
        wrong.join("\n")
    );
    // The walk did walk.
    assert!(
        seen_allowed > 1000 && seen_refused > 500,
        "{seen_allowed} allowed, {seen_refused} refused"
    );
}
