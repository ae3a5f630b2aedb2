//! The end of a failed command's output, which a send-back hands on as
//! feedback. Read from the sealed logs (secrets already masked) through
//! the bundle's confined directory: the step could have planted anything
//! at their names.

use std::io::{Read, Seek, SeekFrom};

use crate::bundle::{self, Bundle};

/// How much of the end of each log is read: enough for the tail's lines.
const READ: u64 = 64 * 1024;

/// The tail of command `count - 1`'s stderr and stdout; None when nothing
/// ran or both are empty or unreadable.
pub(super) fn of_last_command(bundle: &Bundle, count: usize) -> Option<String> {
    let i = count.checked_sub(1)?;
    let read = |name: String| -> String {
        let Ok(mut f) = bundle.confined().open_regular(&name) else {
            return String::new();
        };
        let len = f.metadata().map_or(0, |m| m.len());
        if f.seek(SeekFrom::Start(len.saturating_sub(READ))).is_err() {
            return String::new();
        }
        let mut bytes = Vec::new();
        // A log that cannot be read has no tail to give: the failure stands without it.
        let _ = f.take(READ).read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    };
    orchestrator_core::feedback::log_tail(
        &read(bundle::stderr_name(i)),
        &read(bundle::stdout_name(i)),
    )
}
