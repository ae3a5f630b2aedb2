//! A step's `$ORCH_OUTPUT` file: where it is and how the agent reads it.
//!
//! The file lives in the step's bundle directory, which every sandbox
//! already makes writable to the step at the same path (the vm shares it
//! over 9p), so the variable means the same inside and out. The step wrote
//! the file and may have planted anything at its name, so it is read as
//! every step-written file is: through the bundle's [`ConfinedDir`], only a
//! regular file (never a link, a FIFO or a device), of its own (a hard link
//! to some other file is refused), and never more than the limit.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use orchestrator_core::outputs::{self, Outputs, MAX_STEP_BYTES};
use orchestrator_host::confined::{ConfinedDir, ConfinedError};

/// The output file's name inside the bundle directory.
const OUTPUT_FILE: &str = "outputs";

/// The path the step is given as `$ORCH_OUTPUT`.
pub(super) fn path(bundle: &ConfinedDir) -> PathBuf {
    bundle.path().join(OUTPUT_FILE)
}

/// The outputs the step wrote: none when it wrote no file. The error says
/// which file and what was wrong with it; it is the step's failure.
pub(super) fn read(bundle: &ConfinedDir) -> Result<Outputs, String> {
    let at = path(bundle);
    let fail = |what: String| {
        format!(
            "the step's output file $ORCH_OUTPUT ({}): {what}",
            at.display()
        )
    };
    let file = match bundle.open_regular(OUTPUT_FILE) {
        Ok(f) => f,
        Err(e) if e.is_not_found() => return Ok(Outputs::new()),
        Err(ConfinedError::NotAFile { .. }) => {
            return Err(fail(
                "is a symlink, a FIFO, a directory or a device; expected a regular file (links are never followed)"
                    .to_owned(),
            ))
        }
        Err(e) => return Err(fail(e.to_string())),
    };
    let meta = file.metadata().map_err(|e| fail(e.to_string()))?;
    if meta.nlink() > 1 {
        return Err(fail(format!(
            "has {} names (a hard link); expected a file of its own",
            meta.nlink()
        )));
    }
    if meta.len() > MAX_STEP_BYTES as u64 {
        return Err(fail(format!(
            "holds {} bytes; expected at most {MAX_STEP_BYTES}",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // One byte over the limit tells a file that grew since.
    file.take(MAX_STEP_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    outputs::parse(&bytes).map_err(|e| fail(e.to_string()))
}
