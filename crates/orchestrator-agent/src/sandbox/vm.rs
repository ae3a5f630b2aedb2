//! The vm sandbox: each command runs in its own QEMU virtual machine, booted
//! from the agent's kernel and initramfs (`--vm-kernel`, `--vm-initrd`) with
//! the stage's disk as its root file system. Nothing of the host is visible
//! inside but what is shared over 9p at the same paths: the run's worktree
//! and the step's bundle (writable) and the project's `.git` (read-only).
//! There is no network device unless the stage allows `network` (then
//! QEMU's user networking, NAT to the host's network).
//!
//! # The disk: snapshot and rollback
//!
//! Each stage of a run has its own disk, a qcow2 overlay over the agent's
//! base image (`--vm-image`), kept in the project's
//! `.orchestrator/vm/<run>/<stage>/`: `checkpoint.qcow2` is the disk as of
//! the stage's last checkpoint (made from the base image the first time),
//! `step.qcow2` the running step's copy of it. A step starts from a fresh
//! copy ([`VmSandbox::begin_step`]), so whatever a failed attempt wrote on
//! the disk is gone: that is the rollback. When the step's checkpoint is
//! committed, its copy replaces `checkpoint.qcow2` ([`VmSandbox::keep`]).
//! Only the latest checkpoint's disk is kept: a step that resumes from an
//! older git checkpoint still sees the latest disk.
//!
//! # One command, one boot
//!
//! The agent writes the command (argv, environment, working directory) as
//! a shell script into a control directory shared over 9p (`ctl/` next to
//! the disks), then starts `/bin/sh` running QEMU: the initramfs's init
//! (`scripts/vm-init.sh`) mounts the disk, the shares, `/proc`, `/sys`,
//! `/dev` and a `/tmp` tmpfs, runs the command chrooted into the disk with
//! exactly the command's environment, writes its stdout, stderr and exit
//! status into the control directory and powers off. The host shell then
//! copies stdout and stderr to the step's log files (so a command's output
//! appears when it ends, not while it runs) and exits with the command's
//! status (a command killed by signal N inside reports 128+N). A VM that
//! ends without a status (it could not mount the disk, ...) ends with
//! status 125 and QEMU's messages and the console's last lines on stderr.
//! The shell and QEMU share the command's process group, so a timeout or a
//! cancellation kills the VM. The image must hold `/bin/sh`. `orch ask`
//! does not work inside: its Unix socket is shared but cannot be connected
//! to across 9p, and the agent's URL names the host's loopback.
//!
//! The shell is exec'd in the forked child in place of the command's
//! program (`pre_exec`), which keeps the log files the step set on its
//! stdout and stderr; it gets an environment of its own, so nothing of the
//! step's variables (`LD_PRELOAD`, ...) reaches QEMU on the host.
//!
//! # Acceleration
//!
//! `--vm-accel auto` (the default) boots once with KVM when the agent first
//! needs a VM and uses KVM when that boot runs a command within
//! [`KVM_PROBE`], software emulation (TCG) otherwise. An emulated boot of the
//! uncompressed kernel takes about 5 s, so each command costs that much more.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use nix::libc::{self, c_char};
use orchestrator_core::api::AppliedLimits;
use tokio::process::Command;
use tokio::sync::OnceCell;

use super::SandboxError;
use crate::exec::GroupChild;

mod disk;

pub use disk::VmError;

/// How long the probing boot under KVM may take before KVM counts as
/// unusable (a KVM boot takes well under a second).
pub const KVM_PROBE: Duration = Duration::from_secs(10);

/// The memory of a VM when neither the agent nor the stage asks for more.
pub const DEFAULT_VM_MEMORY_MB: u64 = 256;

/// The accelerator choice of the agent (`--vm-accel`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Accel {
    /// KVM when a test boot under it succeeds, else TCG.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl Accel {
    /// Parses `auto`, `kvm` or `tcg`.
    pub fn parse(s: &str) -> Result<Self, UnknownAccel> {
        match s {
            "auto" => Ok(Accel::Auto),
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            _ => Err(UnknownAccel(s.to_owned())),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// A `--vm-accel` value that names no accelerator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is no VM accelerator; expected auto, kvm or tcg")]
pub struct UnknownAccel(pub String);

/// Why this agent cannot boot a step's VM: a piece of its configuration
/// is missing, named with the flag that sets it.
#[derive(Debug, thiserror::Error)]
pub enum VmUnavailable {
    #[error("orch agent {flag} is not set; expected the path of {what} (scripts/vm-assets.sh builds one)")]
    Unset {
        flag: &'static str,
        what: &'static str,
    },
    #[error("orch agent {flag} {}: no such file; expected {what}", .path.display())]
    NoFile {
        flag: &'static str,
        path: PathBuf,
        what: &'static str,
    },
    #[error("orch agent --qemu {}: no such program; expected QEMU's x86_64 system emulator (.ci/run installs qemu-system-x86)", .program.display())]
    NoQemu { program: PathBuf },
}

/// What the agent boots its VMs from (`orch agent --vm-*`, `--qemu`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// The kernel QEMU boots (`-kernel`): a bzImage or an uncompressed ELF
    /// `vmlinux` with a PVH entry.
    pub kernel: Option<PathBuf>,
    /// The initramfs with the init that runs one command.
    pub initrd: Option<PathBuf>,
    /// The base disk image (qcow2) every stage's disk starts from.
    pub image: Option<PathBuf>,
    /// The VM's memory in MiB, unless the stage's grant is larger.
    pub memory_mb: u64,
    /// `qemu-system-x86_64`; `qemu-img` is looked up next to it.
    pub qemu: PathBuf,
    pub accel: Accel,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            kernel: None,
            initrd: None,
            image: None,
            memory_mb: DEFAULT_VM_MEMORY_MB,
            qemu: PathBuf::from("qemu-system-x86_64"),
            accel: Accel::Auto,
        }
    }
}

/// One step's VM settings and disk.
#[derive(Debug)]
pub struct VmSandbox {
    kernel: PathBuf,
    initrd: PathBuf,
    image: PathBuf,
    qemu: PathBuf,
    accel: Accel,
    memory_mb: u64,
    /// Shared writable at the same path.
    writable: Vec<PathBuf>,
    /// Shared read-only at the same path (those that exist).
    readable: Vec<PathBuf>,
    /// Files bound read-only over others inside the guest: (what, over
    /// what). What covers is copied into the control share.
    covers: Vec<(PathBuf, PathBuf)>,
    network: bool,
    /// The stage's disk directory and the accelerator, once the step began.
    state: Mutex<Option<(PathBuf, Accel)>>,
}

/// The accelerator `Accel::Auto` resolved to, once per agent.
static AUTO_ACCEL: OnceCell<Accel> = OnceCell::const_new();

impl VmSandbox {
    /// The step's VM from the agent's configuration; a missing piece is
    /// named with the flag that sets it.
    pub fn new(
        cfg: &VmConfig,
        writable: Vec<PathBuf>,
        readable: Vec<PathBuf>,
        covers: Vec<(PathBuf, PathBuf)>,
        memory_mb: Option<u64>,
        network: bool,
    ) -> Result<Self, VmUnavailable> {
        let kernel = need_file(&cfg.kernel, "--vm-kernel", "the kernel the VMs boot")?;
        let initrd = need_file(&cfg.initrd, "--vm-initrd", "the initramfs with orch's init")?;
        let image = need_file(&cfg.image, "--vm-image", "the base qcow2 disk image")?;
        let qemu = find_program(&cfg.qemu).ok_or_else(|| VmUnavailable::NoQemu {
            program: cfg.qemu.clone(),
        })?;
        Ok(VmSandbox {
            kernel,
            initrd,
            image,
            qemu,
            accel: cfg.accel,
            memory_mb: memory_mb.map_or(cfg.memory_mb, |m| m.max(cfg.memory_mb)),
            writable,
            readable: readable.into_iter().filter(|p| p.exists()).collect(),
            covers,
            network,
            state: Mutex::new(None),
        })
    }

    /// What bounds each command, for the manifest: the machine's memory.
    pub fn applied(&self) -> AppliedLimits {
        AppliedLimits {
            memory_mb: Some(self.memory_mb),
            pids: None,
            cgroup: None,
            landlock: false,
            note: Some("the memory of the command's VM; processes are not counted".into()),
        }
    }

    /// Prepares the step's disk in `dir` (the stage's directory): a fresh
    /// copy of the last checkpoint's, which discards what a failed attempt
    /// wrote. Resolves the accelerator on the agent's first VM.
    pub async fn begin_step(&self, dir: &Path) -> Result<(), VmError> {
        disk::begin(dir, &self.image, &disk::qemu_img(&self.qemu)).await?;
        let accel = match self.accel {
            Accel::Auto => *AUTO_ACCEL.get_or_init(|| self.probe_kvm(dir)).await,
            a => a,
        };
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Some((dir.to_owned(), accel));
        Ok(())
    }

    /// Keeps the step's disk as the stage's checkpoint.
    pub async fn keep(&self) -> Result<(), VmError> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match state {
            Some((dir, _)) => disk::keep(&dir).await,
            None => Ok(()),
        }
    }

    /// Boots `true` under KVM on a throwaway copy of the base image.
    async fn probe_kvm(&self, dir: &Path) -> Accel {
        let probe = dir.join("kvm-probe");
        let ok = async {
            let _ = tokio::fs::remove_dir_all(&probe).await;
            disk::begin(&probe, &self.image, &disk::qemu_img(&self.qemu))
                .await
                .ok()?;
            let mut cmd = Command::new("true");
            cmd.current_dir("/")
                .env_clear()
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            let plan = self.plan(&cmd, &probe, Accel::Kvm).ok()?;
            let child = plan.spawn(&mut cmd).ok()?;
            let ended = child
                .wait(
                    Some(tokio::time::Instant::now() + KVM_PROBE),
                    &tokio_util::sync::CancellationToken::new(),
                )
                .await
                .ok()?;
            ended.status.success().then_some(())
        }
        .await
        .is_some();
        // Why KVM failed, for the operator: QEMU's own words.
        let said = std::fs::read_to_string(probe.join("qemu.log")).unwrap_or_default();
        let _ = tokio::fs::remove_dir_all(&probe).await;
        let accel = if ok { Accel::Kvm } else { Accel::Tcg };
        tracing::info!(
            accel = accel.name(),
            qemu = said.trim(),
            "vm sandbox: chose the accelerator after a test boot under KVM"
        );
        accel
    }

    /// Spawns `cmd` in a VM on the step's disk.
    pub fn spawn(&self, cmd: &mut Command) -> Result<GroupChild, SandboxError> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (dir, accel) = state.ok_or(SandboxError::Vm(VmError::NotBegun))?;
        let plan = self.plan(cmd, &dir, accel).map_err(SandboxError::Vm)?;
        plan.spawn(cmd)
    }

    /// Writes the control directory for `cmd` and the QEMU command line.
    fn plan(&self, cmd: &Command, dir: &Path, accel: Accel) -> Result<Plan, VmError> {
        let std = cmd.as_std();
        let ctl = dir.join("ctl");
        let io = |what: &'static str| {
            let ctl = ctl.clone();
            move |source| VmError::Io {
                what,
                path: ctl,
                source,
            }
        };
        if ctl.exists() {
            std::fs::remove_dir_all(&ctl).map_err(io("clearing the control directory"))?;
        }
        // Private: it briefly holds the command's environment, secrets included.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&ctl)
            .map_err(io("creating the control directory"))?;

        let mut script = b"exec /bin/env -i".to_vec();
        for (k, v) in std.get_envs() {
            if let Some(v) = v {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                script.push(b' ');
                quote(&mut script, &kv);
            }
        }
        script
            .extend_from_slice(b" /bin/chroot /newroot /bin/sh -c 'cd -- \"$0\" && exec \"$@\"' ");
        let cwd = std.get_current_dir().unwrap_or(Path::new("/"));
        quote(&mut script, cwd.as_os_str().as_bytes());
        for a in std::iter::once(std.get_program()).chain(std.get_args()) {
            script.push(b' ');
            quote(&mut script, a.as_bytes());
        }
        script.push(b'\n');
        std::fs::write(ctl.join("cmd"), script).map_err(io("writing the command"))?;

        let mut shares = String::new();
        let mut args: Vec<Vec<u8>> = Vec::new();
        let mut arg = |a: &[u8]| args.push(a.to_vec());
        let mem = format!("{}M", self.memory_mb);
        for a in [
            "-accel",
            accel.name(),
            "-M",
            "q35",
            "-cpu",
            "max",
            "-m",
            &mem,
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-append",
            "console=ttyS0 quiet panic=-1",
        ] {
            arg(a.as_bytes());
        }
        arg(b"-serial");
        arg(&[b"file:", dir.join("console.log").as_os_str().as_bytes()].concat());
        arg(b"-kernel");
        arg(self.kernel.as_os_str().as_bytes());
        arg(b"-initrd");
        arg(self.initrd.as_os_str().as_bytes());
        arg(b"-drive");
        arg(&drive_opt(&dir.join(disk::STEP))?);
        arg(b"-virtfs");
        arg(&virtfs(&ctl, "orch-ctl", false)?);
        let shared = self.writable.iter().map(|p| (p, false));
        for (i, (path, ro)) in shared
            .chain(self.readable.iter().map(|p| (p, true)))
            .enumerate()
        {
            let tag = format!("orch{i}");
            let text =
                path.to_str()
                    .filter(|s| !s.contains('\n'))
                    .ok_or_else(|| VmError::Path {
                        path: path.clone(),
                        why: "a shared directory's path must be UTF-8 without newlines",
                    })?;
            shares.push_str(&format!("{tag} {text}\n"));
            arg(b"-virtfs");
            arg(&virtfs(path, &tag, ro)?);
        }
        std::fs::write(ctl.join("shares"), shares).map_err(io("writing the shares"))?;
        // The guest binds each `cover-N` of the control share over its
        // target, after the shares are mounted.
        let mut covers = String::new();
        for (i, (what, over)) in super::covers_to_make(&self.covers).iter().enumerate() {
            let Some(text) = over.to_str().filter(|s| !s.contains(['\n', ' '])) else {
                continue;
            };
            let content = std::fs::read(what).map_err(io("reading a covering file"))?;
            std::fs::write(ctl.join(format!("cover-{i}")), content)
                .map_err(io("writing a covering file"))?;
            covers.push_str(&format!("cover-{i} {text}\n"));
        }
        std::fs::write(ctl.join("covers"), covers).map_err(io("writing the covers"))?;
        if self.network {
            std::fs::write(ctl.join("net"), "").map_err(io("writing the network flag"))?;
            arg(b"-nic");
            arg(b"user,model=virtio-net-pci");
        } else {
            arg(b"-nic");
            arg(b"none");
        }
        Plan::new(&ctl, dir, &self.qemu, args)
    }
}

/// Runs QEMU, then hands the command's output and status on as its own.
/// The guest wrote those files (root in the guest reaches the control
/// share through /proc/1/root): one that is not a plain file (a symlink to a host file the agent
/// may read, a FIFO) is ignored. QEMU's messages and the console stay in
/// the stage's directory, out of the guest's reach. The command's
/// environment (secrets included) does not stay on disk.
const WRAPPER: &str = r#"ctl=$1 logs=$2; shift 2
"$@" </dev/null >"$logs/qemu.log" 2>&1
rc=$?
rm -f "$ctl/cmd"
plain() { [ -f "$ctl/$1" ] && [ ! -L "$ctl/$1" ]; }
plain stdout && cat "$ctl/stdout"
plain stderr && cat "$ctl/stderr" >&2
rm -f "$ctl/stdout" "$ctl/stderr"
if plain status && read -r code <"$ctl/status" && [ "$code" -ge 0 ] 2>/dev/null && [ "$code" -le 255 ]; then
    exit "$code"
fi
{
    echo "orch vm sandbox: the VM ended (qemu exit status $rc) without the command's exit status; qemu said:"
    cat "$logs/qemu.log"
    echo "the VM's console ($logs/console.log), last lines:"
    tail -n 20 "$logs/console.log"
} >&2
exit 125
"#;

/// The host shell's argv and environment as C strings, made before fork.
struct Plan {
    argv: Vec<CString>,
    envp: Vec<CString>,
}

/// Pointers into [`Plan`]'s strings, which the `pre_exec` closure owns
/// together with them.
struct Exec {
    _plan: Plan,
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
}

// SAFETY: the pointers point into the CStrings held alongside them, which
// are never mutated or moved (a CString's buffer is on the heap).
unsafe impl Send for Exec {}
unsafe impl Sync for Exec {}

impl Exec {
    /// execve(2); returns only when it failed.
    fn exec(&self) -> io::Error {
        // SAFETY: both arrays are NUL-terminated and point into live CStrings.
        unsafe { libc::execve(self.argv[0], self.argv.as_ptr(), self.envp.as_ptr()) };
        io::Error::last_os_error()
    }
}

impl Plan {
    fn new(ctl: &Path, logs: &Path, qemu: &Path, args: Vec<Vec<u8>>) -> Result<Self, VmError> {
        let c = |b: &[u8]| {
            CString::new(b).map_err(|_| VmError::Path {
                path: PathBuf::from(OsStr::from_bytes(b)),
                why: "it holds a NUL byte",
            })
        };
        let mut argv = vec![
            c(b"/bin/sh")?,
            c(b"-c")?,
            c(WRAPPER.as_bytes())?,
            c(b"sh")?,
            c(ctl.as_os_str().as_bytes())?,
            c(logs.as_os_str().as_bytes())?,
            c(qemu.as_os_str().as_bytes())?,
        ];
        for a in &args {
            argv.push(c(a)?);
        }
        Ok(Plan {
            argv,
            envp: vec![c(b"PATH=/usr/local/bin:/usr/bin:/bin")?],
        })
    }

    /// Spawns `cmd` with the host shell exec'd in place of its program.
    fn spawn(self, cmd: &mut Command) -> Result<GroupChild, SandboxError> {
        let nul = std::ptr::null();
        let argv = self.argv.iter().map(|s| s.as_ptr()).chain([nul]).collect();
        let envp = self.envp.iter().map(|s| s.as_ptr()).chain([nul]).collect();
        let exec = Exec {
            _plan: self,
            argv,
            envp,
        };
        // SAFETY: between fork and exec the closure only calls prctl,
        // getppid and execve, which are async-signal-safe, on pointers
        // prepared before the fork.
        let agent = crate::leftovers::agent_pid();
        unsafe {
            cmd.pre_exec(move || {
                crate::leftovers::die_with_agent(agent)?;
                Err(exec.exec())
            });
        }
        GroupChild::spawn(cmd).map_err(SandboxError::Spawn)
    }
}

/// The file `flag` set, or why it cannot serve as `what`.
fn need_file(
    path: &Option<PathBuf>,
    flag: &'static str,
    what: &'static str,
) -> Result<PathBuf, VmUnavailable> {
    match path {
        None => Err(VmUnavailable::Unset { flag, what }),
        Some(p) if !p.is_file() => Err(VmUnavailable::NoFile {
            flag,
            path: p.clone(),
            what,
        }),
        Some(p) => Ok(p.clone()),
    }
}

/// `program` itself when it names a path, else the first file of that name
/// in PATH: QEMU is started by a shell whose PATH is fixed.
fn find_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_owned());
    }
    super::which(program.to_str()?)
}

/// Appends `s` single-quoted for the shell.
fn quote(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'\'');
    for &b in s {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
}

/// A QEMU option value holding `path`: commas are doubled.
fn escaped(path: &Path) -> Result<Vec<u8>, VmError> {
    let b = path.as_os_str().as_bytes();
    if b.contains(&0) {
        return Err(VmError::Path {
            path: path.to_owned(),
            why: "it holds a NUL byte",
        });
    }
    Ok(b.iter()
        .flat_map(|&c| if c == b',' { vec![b',', b','] } else { vec![c] })
        .collect())
}

fn drive_opt(disk: &Path) -> Result<Vec<u8>, VmError> {
    Ok([
        b"file=".as_slice(),
        &escaped(disk)?,
        b",if=virtio,format=qcow2",
    ]
    .concat())
}

fn virtfs(path: &Path, tag: &str, readonly: bool) -> Result<Vec<u8>, VmError> {
    let ro: &[u8] = if readonly { b",readonly=on" } else { b"" };
    Ok([
        b"local,path=".as_slice(),
        &escaped(path)?,
        b",mount_tag=",
        tag.as_bytes(),
        b",security_model=none",
        ro,
    ]
    .concat())
}
