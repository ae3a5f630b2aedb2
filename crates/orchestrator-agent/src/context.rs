//! The machine's state when a step fails: load, free memory and free disk,
//! appended to the error a human reads, so "it failed" comes with "and the
//! machine was out of memory" when it was.

use std::path::Path;

use orchestrator_core::spec::human_mib;

/// The 1-, 5- and 15-minute load averages in `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> Option<(f64, f64, f64)> {
    let mut w = text.split_whitespace();
    let mut next = || w.next()?.parse::<f64>().ok();
    Some((next()?, next()?, next()?))
}

/// MemAvailable and MemTotal from `/proc/meminfo`, in MiB.
pub fn parse_mem_available(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        let rest = text
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(name))?;
        let mut words = rest.split_whitespace();
        let n: u64 = words.next()?.parse().ok()?;
        words
            .next()
            .filter(|u| u.eq_ignore_ascii_case("kb"))
            .map(|_| n / 1024)
    };
    Some((field("MemAvailable:")?, field("MemTotal:")?))
}

/// Block counts are `u64` on Linux and narrower elsewhere.
#[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
fn blocks(n: nix::libc::fsblkcnt_t) -> u64 {
    n as u64
}

/// `load 1.20 0.90 0.80, memory 3.1 GiB of 16 GiB free, disk 40 GiB of
/// 252 GiB free at DIR`; whatever cannot be read is left out.
pub fn describe(dir: &Path) -> String {
    let mut parts = Vec::new();
    if let Some((a, b, c)) = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| parse_loadavg(&t))
    {
        parts.push(format!("load {a:.2} {b:.2} {c:.2}"));
    }
    if let Some((avail, total)) = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| parse_mem_available(&t))
    {
        parts.push(format!(
            "memory {} of {} free",
            human_mib(avail),
            human_mib(total)
        ));
    }
    if let Ok(s) = nix::sys::statvfs::statvfs(dir) {
        // The field widths differ by platform; u64 holds them all.
        #[allow(clippy::unnecessary_cast)]
        let block = s.fragment_size() as u64;
        let mib = |blocks: u64| blocks.saturating_mul(block) / (1024 * 1024);
        parts.push(format!(
            "disk {} of {} free at {}",
            human_mib(mib(blocks(s.blocks_available()))),
            human_mib(mib(blocks(s.blocks()))),
            dir.display()
        ));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_and_memory_parse_from_proc_text() {
        assert_eq!(
            parse_loadavg("1.20 0.90 0.80 2/345 6789\n"),
            Some((1.2, 0.9, 0.8))
        );
        assert_eq!(parse_loadavg("garbage"), None);
        let mem = "MemTotal:       16384000 kB\nMemFree:  100 kB\nMemAvailable:    3276800 kB\n";
        assert_eq!(parse_mem_available(mem), Some((3200, 16000)));
        assert_eq!(parse_mem_available("MemTotal: 5 kB\n"), None);
    }

    #[test]
    fn the_description_names_load_memory_and_disk_here() {
        let d = describe(Path::new("/"));
        assert!(d.contains("load "), "{d}");
        assert!(d.contains("memory ") && d.contains(" free"), "{d}");
        assert!(d.contains("disk ") && d.contains("free at /"), "{d}");
    }
}
