//! A stage's disk: the checkpoint's overlay and the running step's copy.

use std::io;
use std::path::{Path, PathBuf};

use tokio::process::Command;

/// The disk as of the stage's last checkpoint.
pub const CHECKPOINT: &str = "checkpoint.qcow2";
/// The running step's disk.
pub const STEP: &str = "step.qcow2";

/// Why a step's VM could not be prepared or run.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("the vm sandbox: {what} ({}): {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the vm sandbox: {} failed: {detail}; expected it to create a qcow2 overlay over {}", .program.display(), .image.display())]
    QemuImg {
        program: PathBuf,
        image: PathBuf,
        detail: String,
    },
    #[error("the vm sandbox cannot use the path {}: {why}", .path.display())]
    Path { path: PathBuf, why: &'static str },
    #[error("the vm sandbox: a command was started before the step's disk was prepared (Sandbox::begin_step)")]
    NotBegun,
}

/// `qemu-img` next to `qemu` when there is one, else from PATH.
pub fn qemu_img(qemu: &Path) -> PathBuf {
    qemu.parent()
        .map(|dir| dir.join("qemu-img"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("qemu-img"))
}

/// Makes `dir/step.qcow2` a fresh copy of `dir/checkpoint.qcow2`, which is
/// made first as an empty overlay over `image` when there is none.
pub async fn begin(dir: &Path, image: &Path, qemu_img: &Path) -> Result<(), VmError> {
    let io = |what: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| VmError::Io { what, path, source }
    };
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(io("creating the stage's disk directory", dir))?;
    let checkpoint = dir.join(CHECKPOINT);
    if !checkpoint.exists() {
        // The overlay names its backing file: an absolute path keeps it
        // valid whatever the working directory.
        let image = std::path::absolute(image).map_err(io("resolving the base image", image))?;
        let tmp = dir.join("checkpoint.qcow2.tmp");
        let out = Command::new(qemu_img)
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&image)
            .arg(&tmp)
            .output()
            .await
            .map_err(|e| VmError::QemuImg {
                program: qemu_img.to_owned(),
                image: image.clone(),
                detail: format!("{e} (.ci/run installs qemu-utils)"),
            })?;
        if !out.status.success() {
            return Err(VmError::QemuImg {
                program: qemu_img.to_owned(),
                image,
                detail: format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        tokio::fs::rename(&tmp, &checkpoint)
            .await
            .map_err(io("naming the new overlay", &checkpoint))?;
    }
    let step = dir.join(STEP);
    tokio::fs::copy(&checkpoint, &step)
        .await
        .map_err(io("copying the checkpoint's disk", &step))?;
    Ok(())
}

/// Replaces the checkpoint's disk with the step's (one rename: a crash
/// leaves one or the other whole).
pub async fn keep(dir: &Path) -> Result<(), VmError> {
    let checkpoint = dir.join(CHECKPOINT);
    tokio::fs::rename(dir.join(STEP), &checkpoint)
        .await
        .map_err(|source| VmError::Io {
            what: "keeping the step's disk as the checkpoint's",
            path: checkpoint,
            source,
        })
}
