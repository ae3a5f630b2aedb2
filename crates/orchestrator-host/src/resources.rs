//! What this machine offers to steps besides its slots: memory and GPUs,
//! declared in the agent's configuration or found out when it starts.
//!
//! It exists so that the daemon can place a step only where it fits. What is
//! declared wins and is never probed; what is not is detected: memory is
//! `MemTotal` from `/proc/meminfo`, GPUs are what `nvidia-smi` lists. Neither
//! probe can stop an agent from starting: a machine without `/proc/meminfo`
//! offers no memory (a warning says to declare it), and one where
//! `nvidia-smi` is missing, fails or hangs offers no GPUs.
//!
//! The parsing ([`parse_meminfo`], [`parse_nvidia_smi`]) is pure and tested
//! on its own; [`Probe`] only reads the file and runs the command.

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use orchestrator_core::sched::Gpu;
use orchestrator_core::spec::human_mib;

/// How long `nvidia-smi` may take. Long enough for a driver without
/// persistence mode to wake up its GPUs; short enough that a wedged driver
/// does not hold up the agent for long.
pub const NVIDIA_SMI_TIMEOUT: Duration = Duration::from_secs(10);

/// The question put to `nvidia-smi`: one CSV line per GPU, memory in MiB.
pub const NVIDIA_SMI_ARGS: [&str; 2] = [
    "--query-gpu=index,name,memory.total",
    "--format=csv,noheader,nounits",
];

/// Memory and GPUs offered to steps, as registered with the daemon.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// In MiB; 0 when neither declared nor detected.
    pub memory_mb: u64,
    /// Sorted by index.
    pub gpus: Vec<Gpu>,
}

impl Resources {
    /// The declared values where there are some, the probe's findings for
    /// the rest.
    pub async fn resolve(
        memory_mb: Option<u64>,
        gpus: Option<Vec<Gpu>>,
        probe: &Probe,
    ) -> Resources {
        let memory_mb = match memory_mb {
            Some(m) => m,
            None => probe.memory_mb().unwrap_or(0),
        };
        let mut gpus = match gpus {
            Some(g) => g,
            None => probe.gpus().await,
        };
        gpus.sort_by_key(|g| g.index);
        Resources { memory_mb, gpus }
    }
}

/// Where detection looks. [`Probe::default`] is this machine; tests point it
/// at files and scripts of their own.
#[derive(Debug, Clone)]
pub struct Probe {
    pub meminfo: PathBuf,
    /// The program asked about GPUs, looked up on `PATH` when bare.
    pub nvidia_smi: OsString,
    pub timeout: Duration,
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            meminfo: PathBuf::from("/proc/meminfo"),
            nvidia_smi: OsString::from("nvidia-smi"),
            timeout: NVIDIA_SMI_TIMEOUT,
        }
    }
}

impl Probe {
    /// `MemTotal` in MiB; None (with a warning) when it cannot be read.
    pub fn memory_mb(&self) -> Option<u64> {
        let found = std::fs::read_to_string(&self.meminfo)
            .map_err(|e| e.to_string())
            .and_then(|text| parse_meminfo(&text).ok_or_else(|| "no MemTotal line".to_owned()));
        match found {
            Ok(mb) => {
                tracing::debug!(memory_mb = mb, meminfo = %self.meminfo.display(), "memory detected");
                Some(mb)
            }
            Err(e) => {
                tracing::warn!(
                    meminfo = %self.meminfo.display(),
                    error = %e,
                    "cannot detect this machine's memory; offering none (declare it with --memory)"
                );
                None
            }
        }
    }

    /// The GPUs `nvidia-smi` lists; none when it is missing, fails or
    /// outlives the timeout.
    pub async fn gpus(&self) -> Vec<Gpu> {
        let program = self.nvidia_smi.to_string_lossy();
        let mut cmd = tokio::process::Command::new(&self.nvidia_smi);
        cmd.args(NVIDIA_SMI_ARGS)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Dropped on timeout: the child must not linger.
            .kill_on_drop(true);
        let output = match tokio::time::timeout(self.timeout, cmd.output()).await {
            Err(_) => {
                tracing::info!(%program, timeout = ?self.timeout, "nvidia-smi did not answer in time; no GPUs");
                return Vec::new();
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::NotFound => {
                tracing::debug!(%program, "nvidia-smi not found; no GPUs");
                return Vec::new();
            }
            Ok(Err(e)) => {
                tracing::info!(%program, error = %e, "nvidia-smi could not run; no GPUs");
                return Vec::new();
            }
            Ok(Ok(out)) => out,
        };
        if !output.status.success() {
            // Its complaint (no driver, no devices) may be on either stream.
            let said = [&output.stderr, &output.stdout]
                .iter()
                .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                .find(|s| !s.is_empty())
                .unwrap_or_default();
            let said = said.lines().next().unwrap_or_default();
            tracing::info!(%program, status = %output.status, said, "nvidia-smi failed; no GPUs");
            return Vec::new();
        }
        let (gpus, skipped) = parse_nvidia_smi(&String::from_utf8_lossy(&output.stdout));
        for s in &skipped {
            tracing::warn!(%program, line = %s.line, why = %s.why, "skipping a line of nvidia-smi's answer");
        }
        tracing::debug!(%program, count = gpus.len(), "GPUs detected");
        gpus
    }
}

/// `MemTotal` of a `/proc/meminfo` text, in MiB (rounded down).
pub fn parse_meminfo(text: &str) -> Option<u64> {
    let rest = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("MemTotal:"))?;
    let mut words = rest.split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some(unit) if unit.eq_ignore_ascii_case("kb") => Some(n / 1024),
        _ => None,
    }
}

/// A line of `nvidia-smi`'s answer that was not understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub line: String,
    pub why: String,
}

/// The GPUs in `nvidia-smi --query-gpu=index,name,memory.total
/// --format=csv,noheader,nounits` output, sorted by index, and the lines that
/// were skipped (blank lines are ignored). The name may hold commas: the
/// index is the first field, the memory the last.
pub fn parse_nvidia_smi(text: &str) -> (Vec<Gpu>, Vec<Skipped>) {
    let mut gpus: Vec<Gpu> = Vec::new();
    let mut skipped = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let mut skip = |why: String| {
            skipped.push(Skipped {
                line: line.to_owned(),
                why,
            })
        };
        let (Some((index, rest)), Some((_, memory))) =
            (line.split_once(','), line.rsplit_once(','))
        else {
            skip("expected index, name, memory.total".into());
            continue;
        };
        let Some((name, _)) = rest.rsplit_once(',') else {
            skip("expected index, name, memory.total".into());
            continue;
        };
        let (index, name, memory) = (index.trim(), name.trim(), memory.trim());
        let Ok(index) = index.parse::<u32>() else {
            skip(format!("index {index:?} is not a number"));
            continue;
        };
        let memory_mb = match memory.parse::<u64>() {
            Ok(m) if m > 0 => m,
            _ => {
                skip(format!("memory.total {memory:?} is not a number of MiB"));
                continue;
            }
        };
        if gpus.iter().any(|g| g.index == index) {
            skip(format!("index {index} is listed twice"));
            continue;
        }
        gpus.push(Gpu {
            index,
            name: name.to_owned(),
            memory_mb,
        });
    }
    gpus.sort_by_key(|g| g.index);
    (gpus, skipped)
}

/// The GPUs in a log line: `0 NVIDIA A100 (80 GiB), 1 ... ` or `none`.
pub fn describe_gpus(gpus: &[Gpu]) -> String {
    if gpus.is_empty() {
        return "none".to_owned();
    }
    gpus.iter()
        .map(|g| {
            let name = if g.name.is_empty() { "GPU" } else { &g.name };
            format!("{} {name} ({})", g.index, human_mib(g.memory_mb))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: u32, name: &str, memory_mb: u64) -> Gpu {
        Gpu {
            index,
            name: name.into(),
            memory_mb,
        }
    }

    const MEMINFO: &str = "\
MemTotal:       65849932 kB
MemFree:         3204564 kB
MemAvailable:   41562248 kB
Buffers:         1163040 kB
";

    #[test]
    fn meminfo_gives_memtotal_in_mib() {
        assert_eq!(parse_meminfo(MEMINFO), Some(64306));
        // MemTotal is not always first.
        assert_eq!(parse_meminfo("MemFree: 1 kB\nMemTotal: 2048 kB\n"), Some(2));
    }

    #[test]
    fn meminfo_without_a_usable_memtotal_gives_nothing() {
        assert_eq!(parse_meminfo(""), None);
        assert_eq!(parse_meminfo("MemFree: 1024 kB\n"), None);
        assert_eq!(parse_meminfo("MemTotal: lots kB\n"), None);
        assert_eq!(parse_meminfo("MemTotal: 1024\n"), None);
        assert_eq!(parse_meminfo("MemTotal: 1024 MB\n"), None);
    }

    #[test]
    fn nvidia_smi_lines_become_gpus() {
        let out = "0, NVIDIA H100 80GB HBM3, 81559\n1, NVIDIA H100 80GB HBM3, 81559\n";
        let (gpus, skipped) = parse_nvidia_smi(out);
        assert_eq!(
            gpus,
            [
                gpu(0, "NVIDIA H100 80GB HBM3", 81559),
                gpu(1, "NVIDIA H100 80GB HBM3", 81559)
            ]
        );
        assert!(skipped.is_empty(), "{skipped:?}");
    }

    #[test]
    fn nvidia_smi_output_is_read_leniently() {
        // CRLF, blank lines, extra spaces, a comma in the name, out of order.
        let out = "\r\n 3 ,  Tesla T4 , 15360 \r\n\r\n2, Odd, Name, With Commas, 24576\n";
        let (gpus, skipped) = parse_nvidia_smi(out);
        assert_eq!(
            gpus,
            [
                gpu(2, "Odd, Name, With Commas", 24576),
                gpu(3, "Tesla T4", 15360)
            ]
        );
        assert!(skipped.is_empty(), "{skipped:?}");
    }

    #[test]
    fn malformed_nvidia_smi_lines_are_skipped_with_a_reason() {
        let out = "\
0, NVIDIA A100-SXM4-40GB, 40960
No devices were found
1, NVIDIA A100-SXM4-40GB, [N/A]
x, NVIDIA A100-SXM4-40GB, 40960
2, 40960
0, NVIDIA A100-SXM4-40GB, 40960
4, NVIDIA A100-SXM4-40GB, 0
5, NVIDIA A10, 23028
";
        let (gpus, skipped) = parse_nvidia_smi(out);
        assert_eq!(
            gpus,
            [
                gpu(0, "NVIDIA A100-SXM4-40GB", 40960),
                gpu(5, "NVIDIA A10", 23028)
            ]
        );
        let why: Vec<(&str, &str)> = skipped
            .iter()
            .map(|s| (s.line.as_str(), s.why.as_str()))
            .collect();
        assert_eq!(
            why,
            [
                (
                    "No devices were found",
                    "expected index, name, memory.total"
                ),
                (
                    "1, NVIDIA A100-SXM4-40GB, [N/A]",
                    "memory.total \"[N/A]\" is not a number of MiB"
                ),
                (
                    "x, NVIDIA A100-SXM4-40GB, 40960",
                    "index \"x\" is not a number"
                ),
                ("2, 40960", "expected index, name, memory.total"),
                ("0, NVIDIA A100-SXM4-40GB, 40960", "index 0 is listed twice"),
                (
                    "4, NVIDIA A100-SXM4-40GB, 0",
                    "memory.total \"0\" is not a number of MiB"
                ),
            ]
        );
    }

    #[test]
    fn empty_nvidia_smi_output_is_no_gpus() {
        assert_eq!(parse_nvidia_smi(""), (vec![], vec![]));
        assert_eq!(parse_nvidia_smi("\n\n"), (vec![], vec![]));
    }

    #[test]
    fn gpus_are_described_for_the_log() {
        assert_eq!(describe_gpus(&[]), "none");
        assert_eq!(
            describe_gpus(&[gpu(0, "NVIDIA A10", 23028), gpu(1, "", 24576)]),
            "0 NVIDIA A10 (22.5 GiB), 1 GPU (24 GiB)"
        );
    }
}
