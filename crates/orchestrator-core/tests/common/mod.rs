//! What the core's tests share: placement needs in a line (the scheduler's
//! tests) and workflows written in the Rust source (the validation tests).
// Each test binary uses a part of this.
#![allow(dead_code)]

use orchestrator_core::sched::policy::PriorityRange;
use orchestrator_core::sched::Needs;

pub mod stage_events;
pub mod workflow_text;

/// Needs without labels: memory, whole GPUs or one shared GPU's memory.
pub fn needs(memory_mb: u64, gpus: u32, gpu_memory_mb: Option<u64>) -> Needs {
    Needs {
        labels: Vec::new(),
        memory_mb,
        gpus,
        gpu_memory_mb,
    }
}

/// One GPU shared with others: `gpu_memory_mb` of its memory.
pub fn shared(gpu_memory_mb: u64) -> Needs {
    needs(0, 1, Some(gpu_memory_mb))
}

/// `n` whole GPUs.
pub fn whole(n: u32) -> Needs {
    needs(0, n, None)
}

pub fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// A project's or the system's priority range.
pub fn range(min: i32, max: i32) -> Option<PriorityRange> {
    Some(PriorityRange { min, max })
}
