//! The simulated fleet and its work: three kinds of agent (CPU, `big`, GPU) and
//! five resource shapes of one-step stages, mixed in fixed proportions, and the
//! workflows that carry them; a job's stage id says its shape, so a claim can be
//! checked against the agent it went to.

use anyhow::{bail, Result};
use orchestrator_core::sched::Grant;

use super::GIB;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum AgentKind {
    Cpu,
    Big,
    Gpu,
}

/// 70% CPU-only, 20% `big`, 10% with GPUs, interleaved so any N of ten
/// or more has the mix; all CPU-only when `plain`.
pub(super) fn agent_kind(i: usize, plain: bool) -> AgentKind {
    if plain {
        return AgentKind::Cpu;
    }
    match i % 10 {
        0..=6 => AgentKind::Cpu,
        7 | 8 => AgentKind::Big,
        _ => AgentKind::Gpu,
    }
}

pub(super) struct AgentSpec {
    pub(super) kind: AgentKind,
    pub(super) slots: u32,
    pub(super) memory_mb: u64,
    pub(super) gpus: Vec<u64>,
}

pub(super) fn agent_spec(kind: AgentKind) -> AgentSpec {
    match kind {
        AgentKind::Cpu => AgentSpec {
            kind,
            slots: 4,
            memory_mb: 16 * GIB,
            gpus: vec![],
        },
        AgentKind::Big => AgentSpec {
            kind,
            slots: 8,
            memory_mb: 64 * GIB,
            gpus: vec![],
        },
        AgentKind::Gpu => AgentSpec {
            kind,
            slots: 4,
            memory_mb: 64 * GIB,
            gpus: vec![24 * GIB, 24 * GIB],
        },
    }
}

/// A stage's resource shape; the stage id starts with its letter, so a
/// claimed job says what it needed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum JobShape {
    /// `resources: {gpus: 1, gpu_memory: 8G}`: GPU agents only.
    Gpu,
    /// `labels: [big]`: big agents only.
    Big,
    /// `resources: {memory: 24G}`: more than a CPU agent has.
    Huge,
    /// `resources: {memory: 4G}`: four fill a CPU agent.
    Mem,
    Plain,
}

/// 3% GPU, 10% big, 5% 24G, 25% 4G, 57% plain, interleaved.
/// All plain when `plain`.
pub(super) fn job_shape(i: usize, plain: bool) -> JobShape {
    if plain {
        return JobShape::Plain;
    }
    match i % 100 {
        0..=2 => JobShape::Gpu,
        3..=12 => JobShape::Big,
        13..=17 => JobShape::Huge,
        18..=42 => JobShape::Mem,
        _ => JobShape::Plain,
    }
}

impl JobShape {
    pub(super) fn letter(self) -> char {
        match self {
            JobShape::Gpu => 'g',
            JobShape::Big => 'b',
            JobShape::Huge => 'h',
            JobShape::Mem => 'm',
            JobShape::Plain => 'p',
        }
    }

    pub(super) fn of_stage(id: &str) -> Option<Self> {
        Some(match id.chars().next()? {
            'g' => JobShape::Gpu,
            'b' => JobShape::Big,
            'h' => JobShape::Huge,
            'm' => JobShape::Mem,
            'p' => JobShape::Plain,
            _ => return None,
        })
    }

    pub(super) fn yaml(self) -> &'static str {
        match self {
            JobShape::Gpu => "    resources: {gpus: 1, gpu_memory: 8G}\n",
            JobShape::Big => "    labels: [big]\n",
            JobShape::Huge => "    resources: {memory: 24G}\n",
            JobShape::Mem => "    resources: {memory: 4G}\n",
            JobShape::Plain => "",
        }
    }

    /// Why a grant to an agent of `kind` is wrong for this shape, if it is.
    pub(super) fn misplaced(self, kind: AgentKind, g: &Grant) -> Option<String> {
        let gpu_mem: Vec<u64> = g.gpus.iter().map(|x| x.memory_mb).collect();
        let ok = match self {
            JobShape::Gpu => kind == AgentKind::Gpu && gpu_mem == [8 * GIB],
            JobShape::Big => kind == AgentKind::Big && g.gpus.is_empty(),
            JobShape::Huge => kind != AgentKind::Cpu && g.memory_mb == 24 * GIB,
            JobShape::Mem => g.memory_mb == 4 * GIB && g.gpus.is_empty(),
            JobShape::Plain => g.gpus.is_empty(),
        };
        (!ok).then(|| {
            format!(
                "a {self:?} job went to a {kind:?} agent with grant {} MiB memory, GPU memory {gpu_mem:?}",
                g.memory_mb
            )
        })
    }
}

/// `runs` runs of `jobs` one-step stages in all, as even as they divide.
pub(super) fn workflows(jobs: usize, runs: usize, plain: bool) -> Result<Vec<String>> {
    let runs = runs.min(jobs).max(1);
    let per = jobs.div_ceil(runs);
    if per > orchestrator_core::validate::MAX_STAGES {
        bail!(
            "--jobs {jobs}: {per} stages per run over {runs} runs; a workflow takes at most {}",
            orchestrator_core::validate::MAX_STAGES
        );
    }
    let mut out = Vec::with_capacity(runs);
    let mut i = 0;
    for r in 0..runs {
        let n = jobs / runs + usize::from(r < jobs % runs);
        let mut y = format!("name: sched-{r}\nstages:\n");
        for _ in 0..n {
            let s = job_shape(i, plain);
            y.push_str(&format!("  - id: {}{i}\n", s.letter()));
            y.push_str(s.yaml());
            y.push_str("    steps: [{commands: [{argv: [/bin/true]}]}]\n");
            i += 1;
        }
        out.push(y);
    }
    Ok(out)
}
