//! Resource detection against stand-ins for `/proc/meminfo` and
//! `nvidia-smi`: what is found, what a missing, failing or hanging
//! `nvidia-smi` gives (no GPUs, no error), and declared values winning
//! without anything being probed.
//!
//! One test only: the stand-in scripts are written and then executed, and a
//! process forked meanwhile by a parallel test would hold a script open for
//! writing, making its execution fail ("text file busy").

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use orchestrator_core::sched::Gpu;
use orchestrator_host::{Probe, Resources};

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn probe(meminfo: &Path, nvidia_smi: &Path) -> Probe {
    Probe {
        meminfo: meminfo.to_owned(),
        nvidia_smi: nvidia_smi.into(),
        timeout: Duration::from_secs(5),
    }
}

fn gpu(index: u32, name: &str, memory_mb: u64) -> Gpu {
    Gpu {
        index,
        name: name.into(),
        memory_mb,
    }
}

#[tokio::test]
async fn detection_and_declarations() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let meminfo = d.join("meminfo");
    fs::write(&meminfo, "MemTotal:       32768000 kB\nMemFree: 1 kB\n").unwrap();
    let asked = d.join("asked");
    let smi = script(
        d,
        "smi",
        &format!(
            "echo \"$@\" > {}\nprintf '1, NVIDIA L4, 23034\\n0, NVIDIA L4, 23034\\nbad line\\n'",
            asked.display()
        ),
    );
    let failing = script(
        d,
        "failing",
        "echo 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.'; exit 9",
    );
    let hanging = script(d, "hanging", "exec sleep 30");

    // Detected: memory in MiB, the GPUs sorted, the bad line skipped.
    let found = Resources::resolve(None, None, &probe(&meminfo, &smi)).await;
    assert_eq!(found.memory_mb, 32000);
    assert_eq!(
        found.gpus,
        [gpu(0, "NVIDIA L4", 23034), gpu(1, "NVIDIA L4", 23034)]
    );
    assert_eq!(
        fs::read_to_string(&asked).unwrap(),
        "--query-gpu=index,name,memory.total --format=csv,noheader,nounits\n"
    );

    // Declared: nothing is probed.
    fs::remove_file(&asked).unwrap();
    let declared = vec![gpu(0, "", 24576)];
    let missing_meminfo = d.join("no-meminfo");
    let got = Resources::resolve(
        Some(512),
        Some(declared.clone()),
        &probe(&missing_meminfo, &smi),
    )
    .await;
    assert_eq!(got.memory_mb, 512);
    assert_eq!(got.gpus, declared);
    assert!(!asked.exists(), "nvidia-smi ran though GPUs were declared");
    // Declaring no GPUs is a declaration too.
    let none = Resources::resolve(Some(1), Some(vec![]), &probe(&meminfo, &smi)).await;
    assert!(none.gpus.is_empty());
    assert!(
        !asked.exists(),
        "nvidia-smi ran though no GPUs were declared"
    );

    // Nothing to detect with: no memory, no GPUs, no error.
    let missing_smi = d.join("no-such-nvidia-smi");
    let bare = Resources::resolve(None, None, &probe(&missing_meminfo, &missing_smi)).await;
    assert_eq!(bare, Resources::default());
    let bare = probe(&meminfo, Path::new("no-such-nvidia-smi-on-path"))
        .gpus()
        .await;
    assert!(bare.is_empty());

    // A failing nvidia-smi: no GPUs.
    assert!(probe(&meminfo, &failing).gpus().await.is_empty());

    // A hanging one: no GPUs once the timeout is up, and it is killed.
    let started = Instant::now();
    let mut p = probe(&meminfo, &hanging);
    p.timeout = Duration::from_millis(200);
    assert!(p.gpus().await.is_empty());
    assert!(started.elapsed() < Duration::from_secs(10));
}
