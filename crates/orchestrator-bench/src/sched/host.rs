//! What the machine was doing while the bench ran (Linux `/proc`): the load
//! average, and the store writer thread's time on a CPU and waiting for one.

/// The 1-minute load average, where the system tells it: the machine is
/// shared, and a busy neighbour shows in every figure.
pub(super) fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The store's writer threads by id, where the system tells: a new one
/// appears when a store opens.
pub(super) fn writer_threads() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let p = e.ok()?.path();
        let comm = std::fs::read_to_string(p.join("comm")).ok()?;
        (comm.trim() == "store-writer").then(|| p.file_name()?.to_str().map(str::to_owned))?
    })
    .collect()
}

/// A thread's nanoseconds on a CPU and waiting for one (`schedstat`):
/// tells the store's own cost from what busy neighbours take from it.
pub(super) fn schedstat(tid: &str) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    let mut f = text.split_whitespace().map(|x| x.parse::<u64>().ok());
    Some((f.next()??, f.next()??))
}
