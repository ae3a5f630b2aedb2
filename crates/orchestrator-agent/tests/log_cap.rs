//! A command that prints without end: its log is held to the agent's cap,
//! on disk while it runs and in the bundle after, with the head and the tail
//! kept and the cut marked.

use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use orchestrator_core::spec::SandboxKind;

mod common;

use common::sandboxed::{sh, spec, Project};

const CAP: u64 = 8 << 20;
const PRINTED: u64 = 1 << 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_log_is_kept_to_its_cap_while_it_runs() {
    let mut p = Project::new();
    p.cfg.log_cap = CAP;
    let job = p.job(
        spec(SandboxKind::Namespace),
        vec![sh(&format!(
            "echo BEGIN; head -c {PRINTED} /dev/zero | tr '\\0' x; echo; echo END"
        ))],
    );
    // Watches the log's disk use while the command writes it.
    let log = p.bundle(&job).join("cmd-000.stdout.log");
    let (done, most) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let watcher = {
        let (done, most) = (done.clone(), most.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Ok(m) = std::fs::metadata(&log) {
                    most.fetch_max(m.blocks() * 512, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let out = p
        .run_job(&job, tokio_util::sync::CancellationToken::new())
        .await;
    done.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    assert!(out.success, "{:?}", out.error);
    let most = most.load(Ordering::Relaxed);
    assert!(
        most < PRINTED / 4,
        "the log took {most} bytes of disk while the command ran"
    );
    let kept = std::fs::read(p.bundle(&job).join("cmd-000.stdout.log")).unwrap();
    assert!(kept.starts_with(b"BEGIN\nxxx"), "{:?}", &kept[..20]);
    assert!(kept.ends_with(b"xxx\nEND\n"));
    let text = String::from_utf8_lossy(&kept);
    assert!(
        text.contains("bytes of this log were cut here: it passed its cap of 8388608 bytes"),
        "no marker"
    );
    assert!(kept.len() as u64 <= CAP + 512, "{} bytes kept", kept.len());
    assert!(kept.len() as u64 >= CAP, "{} bytes kept", kept.len());
}
