//! The vm sandbox's command-line options (`--vm-*`, `--qemu`), shared by
//! `orch agent`, `orch up` and the sandbox bench, so each says them alike.
//! Built with the `args` feature, which brings in clap.

use std::path::PathBuf;

use orchestrator_core::spec::SizeSpec;

use super::vm::{Accel, VmConfig};

/// What the vm sandbox boots (scripts/vm-assets.sh builds the three files).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct VmOpts {
    /// The kernel of the vm sandbox's VMs (a bzImage, or an uncompressed
    /// vmlinux, which boots faster under software emulation).
    #[arg(long, value_name = "PATH", env = "ORCH_VM_KERNEL")]
    pub vm_kernel: Option<PathBuf>,
    /// The initramfs holding orch's VM init.
    #[arg(long, value_name = "PATH", env = "ORCH_VM_INITRD")]
    pub vm_initrd: Option<PathBuf>,
    /// The base disk image (qcow2) each stage's VM disk starts from.
    #[arg(long, value_name = "PATH", env = "ORCH_VM_IMAGE")]
    pub vm_image: Option<PathBuf>,
    /// A VM's memory, unless the stage was granted more. Default: 256M.
    #[arg(long, value_name = "SIZE", env = "ORCH_VM_MEMORY", value_parser = SizeSpec::parse)]
    pub vm_memory: Option<SizeSpec>,
    /// KVM, software emulation (tcg), or auto: KVM when a test boot under it
    /// works. Default: auto.
    #[arg(long, value_name = "ACCEL", env = "ORCH_VM_ACCEL", value_parser = Accel::parse)]
    pub vm_accel: Option<Accel>,
    /// The QEMU system emulator; qemu-img is taken from its directory.
    /// Default: qemu-system-x86_64 from PATH.
    #[arg(long, value_name = "PATH", env = "ORCH_QEMU")]
    pub qemu: Option<PathBuf>,
}

impl VmOpts {
    /// What the vm sandbox boots, the defaults filling what is not given.
    pub fn config(&self) -> VmConfig {
        let d = VmConfig::default();
        VmConfig {
            kernel: self.vm_kernel.clone(),
            initrd: self.vm_initrd.clone(),
            image: self.vm_image.clone(),
            memory_mb: self.vm_memory.map_or(d.memory_mb, SizeSpec::as_mib),
            qemu: self.qemu.clone().unwrap_or(d.qemu),
            accel: self.vm_accel.unwrap_or(d.accel),
        }
    }
}
