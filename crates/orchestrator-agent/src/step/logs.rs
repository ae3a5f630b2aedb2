//! A command's logs after it ran: masked, held to their cap, and the
//! agent's own files at their names.
//!
//! The command writes its logs straight to disk through descriptors the
//! agent made (no copy through the agent while it runs). Afterwards the
//! agent reads them back through its own descriptors, never by name: the
//! step could have put anything at the name meanwhile. Sealing a log writes
//! a fresh file (secret values masked, the middle cut when it passed its
//! cap) and renames it over the name, whatever the step left there; a log
//! that needs neither, and whose name still holds the agent's file, is left
//! as it is, so the common case costs one `fstatat`.
//!
//! While the command runs, [`bound`] keeps its logs' disk use near the cap
//! by punching out the middle (`FALLOC_FL_PUNCH_HOLE`): the part sealing
//! drops anyway.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::time::Duration;

use orchestrator_host::confined::ConfinedDir;

use super::redact::MASK;

/// The default cap of one command's stdout or stderr log, in bytes: the
/// first and the last half of it are kept.
pub const DEFAULT_LOG_CAP: u64 = 32 << 20;

/// Bytes read at once.
const CHUNK: usize = 1 << 20;

/// How often a running command's logs are held to their cap.
const BOUND_EVERY: Duration = Duration::from_millis(250);

/// Punched holes start and end on this boundary (file systems punch whole
/// blocks only).
const BLOCK: u64 = 4096;

/// What sealing keeps of a log of `len` bytes under `cap`: the head's end
/// and the tail's start, when a middle is cut.
fn cut(len: u64, cap: u64) -> Option<(u64, u64)> {
    (cap > 0 && len > cap).then(|| (cap / 2, len - cap / 2))
}

/// The line that stands where the middle of a log was cut.
fn marker(cut_bytes: u64, cap: u64) -> String {
    format!(
        "\n[orch: {cut_bytes} bytes of this log were cut here: it passed its cap of {cap} bytes (orch agent --log-cap); its first and last {} bytes are kept]\n",
        cap / 2
    )
}

/// Seals log `name` of the bundle, which the command wrote through `log`;
/// see the module documentation. Returns the bytes cut from its middle.
pub(super) fn seal(
    dir: &ConfinedDir,
    name: &str,
    log: &File,
    values: &[String],
    cap: u64,
) -> io::Result<u64> {
    let len = log.metadata()?.len();
    let cut = cut(len, cap);
    let replaced = !dir.holds(name, log)?;
    if values.is_empty() && cut.is_none() && !replaced {
        return Ok(0);
    }
    let tmp = format!("{}.redacting", name.trim_end_matches(".log"));
    let mut out = io::BufWriter::new(dir.create(&tmp)?);
    let (changed, cut_bytes) = match cut {
        None => (copy_masked(log, 0, len, values, &mut out)?, 0),
        Some((head, tail)) => {
            copy_masked(log, 0, head, values, &mut out)?;
            out.write_all(marker(tail - head, cap).as_bytes())?;
            copy_masked(log, tail, len, values, &mut out)?;
            (true, tail - head)
        }
    };
    let out = out.into_inner().map_err(io::IntoInnerError::into_error)?;
    if changed || replaced {
        out.sync_all()?;
        drop(out);
        dir.rename(&tmp, name)?;
    } else {
        drop(out);
        dir.remove(&tmp)?;
    }
    Ok(cut_bytes)
}

/// Copies `src[from..to)` to `out` with every value replaced by [`MASK`];
/// a value that crosses `from` or `to` is masked whole, so that no part of
/// it is written. `values` must be longest first. Says whether any value
/// was masked.
pub(super) fn copy_masked(
    src: &File,
    from: u64,
    to: u64,
    values: &[String],
    out: &mut impl Write,
) -> io::Result<bool> {
    let len = src.metadata()?.len();
    let to = to.min(len);
    if from >= to {
        return Ok(false);
    }
    let longest = values.first().map_or(0, |v| v.len() as u64);
    let margin = longest.saturating_sub(1);
    let read_end = (to + margin).min(len);
    let mut base = from.saturating_sub(margin);
    let mut next = base;
    let mut window: Vec<u8> = Vec::with_capacity(CHUNK + margin as usize);
    let mut chunk = vec![0; CHUNK];
    let mut emitted = Vec::with_capacity(CHUNK);
    let mut changed = false;
    loop {
        let want = usize::try_from(read_end - next).map_or(CHUNK, |w| w.min(CHUNK));
        let n = read_at_most(src, &mut chunk[..want], next)?;
        window.extend_from_slice(&chunk[..n]);
        next += n as u64;
        let eof = n == 0 || next >= read_end;
        // A value starting at a position is told only once `longest` bytes
        // from it are in the window (or the input ends).
        let decidable = base + window.len() as u64 - if eof { 0 } else { margin };
        let mut i = 0usize;
        let mut pos = base;
        while pos < decidable && pos < to {
            let rest = &window[i..];
            match values.iter().find(|v| rest.starts_with(v.as_bytes())) {
                Some(v) => {
                    if pos + v.len() as u64 > from {
                        emitted.extend_from_slice(MASK.as_bytes());
                        changed = true;
                    }
                    i += v.len();
                    pos += v.len() as u64;
                }
                None => {
                    if pos >= from {
                        emitted.push(window[i]);
                    }
                    i += 1;
                    pos += 1;
                }
            }
        }
        out.write_all(&emitted)?;
        emitted.clear();
        if eof || pos >= to {
            return Ok(changed);
        }
        window.drain(..i.min(window.len()));
        base = pos;
    }
}

/// Reads up to `buf.len()` bytes at `offset`; fewer only at the end.
fn read_at_most(src: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match src.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Holds the running command's logs near `cap` on disk, until dropped: the
/// middle that sealing will cut is punched out as it grows. A file system
/// that cannot punch holes leaves the logs whole until sealing.
pub(super) async fn bound(logs: [&File; 2], cap: u64) -> std::convert::Infallible {
    if cap == 0 {
        return std::future::pending().await;
    }
    let mut punched = [0u64; 2];
    let mut tick = tokio::time::interval(BOUND_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for (log, done) in logs.iter().zip(punched.iter_mut()) {
            let Ok(len) = log.metadata().map(|m| m.len()) else {
                continue;
            };
            let Some((head, tail)) = cut(len, cap) else {
                continue;
            };
            let start = head.div_ceil(BLOCK) * BLOCK;
            let end = tail / BLOCK * BLOCK;
            let start = start.max(*done);
            if end <= start {
                continue;
            }
            match punch(log, start, end - start) {
                Ok(()) => *done = end,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot punch the middle out of a log; it is cut when the command ends");
                    *done = u64::MAX;
                }
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn punch(log: &File, offset: u64, len: u64) -> io::Result<()> {
    use nix::fcntl::{fallocate, FallocateFlags};
    let off = i64::try_from(offset).map_err(io::Error::other)?;
    let len = i64::try_from(len).map_err(io::Error::other)?;
    fallocate(
        log,
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        off,
        len,
    )
    .map_err(io::Error::from)
}

#[cfg(not(target_os = "linux"))]
fn punch(_: &File, _: u64, _: u64) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

#[cfg(test)]
mod tests {
    use super::super::redact::values;
    use super::*;
    use std::path::Path;

    fn file(bytes: &[u8]) -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("log"), bytes).unwrap();
        let f = File::open(dir.path().join("log")).unwrap();
        (dir, f)
    }

    fn masked(bytes: &[u8], from: u64, to: u64, vals: &[String]) -> Vec<u8> {
        let (_d, f) = file(bytes);
        let mut out = Vec::new();
        copy_masked(&f, from, to, vals, &mut out).unwrap();
        out
    }

    #[test]
    fn values_are_masked_across_chunks() {
        let vals = values(&["abc".to_owned(), "abcdef".to_owned(), String::new()]);
        let mut content = vec![b'.'; CHUNK - 2];
        content.extend_from_slice(b"abcdef!abc");
        let out = masked(&content, 0, content.len() as u64, &vals);
        assert!(out.ends_with(b"...***!***"), "{:?}", &out[out.len() - 10..]);
        assert_eq!(out.len(), CHUNK - 2 + 7);
    }

    #[test]
    fn a_value_crossing_the_range_is_masked_whole() {
        let vals = values(&["secret".to_owned()]);
        // The range [3, 9) cuts "secret" (at 2..8) on the left.
        assert_eq!(masked(b"xxsecretyy", 3, 9, &vals), b"***y");
        // And on the right: [0, 4) holds "xxse".
        assert_eq!(masked(b"xxsecretyy", 0, 4, &vals), b"xx***");
        assert_eq!(masked(b"xxsecretyy", 0, 10, &[]), b"xxsecretyy");
    }

    #[test]
    fn sealing_cuts_the_middle_and_marks_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ConfinedDir::open(tmp.path(), Path::new(""), false).unwrap();
        let mut log = dir.create("cmd-000.stdout.log").unwrap();
        let mut body = vec![b'h'; 100];
        body.extend(vec![b'm'; 1000]);
        body.extend(vec![b't'; 100]);
        log.write_all(&body).unwrap();
        let cut = seal(&dir, "cmd-000.stdout.log", &log, &[], 200).unwrap();
        assert_eq!(cut, 1000);
        let text = std::fs::read_to_string(tmp.path().join("cmd-000.stdout.log")).unwrap();
        assert!(text.starts_with(&"h".repeat(100)), "{text}");
        assert!(text.ends_with(&"t".repeat(100)), "{text}");
        assert!(
            text.contains("1000 bytes of this log were cut here"),
            "{text}"
        );
        assert!(!text.contains('m'));
    }

    #[test]
    fn punching_keeps_head_and_tail_readable() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ConfinedDir::open(tmp.path(), Path::new(""), false).unwrap();
        let mut log = dir.create("l").unwrap();
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        log.write_all(&body).unwrap();
        let (head, tail) = cut(body.len() as u64, 40_000).unwrap();
        let start = head.div_ceil(BLOCK) * BLOCK;
        punch(&log, start, tail / BLOCK * BLOCK - start).unwrap();
        let mut out = Vec::new();
        copy_masked(&log, 0, head, &[], &mut out).unwrap();
        copy_masked(&log, tail, body.len() as u64, &[], &mut out).unwrap();
        let mut want = body[..head as usize].to_vec();
        want.extend_from_slice(&body[tail as usize..]);
        assert_eq!(out, want);
    }
}
