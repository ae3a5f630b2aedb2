//! What the run worktree and checkpoint tests share: a checkpoint's request,
//! artifact patterns in a line, files written into a tree.

use std::fs;
use std::path::Path;

use orchestrator_core::RunId;
use orchestrator_host::git::CheckpointRequest;

pub fn request<'a>(
    run_id: &'a RunId,
    artifacts: &'a [String],
    record: &'a [u8],
    message: &'a str,
) -> CheckpointRequest<'a> {
    CheckpointRequest {
        run_id,
        artifacts,
        record,
        step_git: None,
        message,
    }
}

pub fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

pub fn write(root: &Path, rel: &str, content: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}
