//! Resources and placement: what a stage needs, what an agent has, what it
//! has free given the jobs it runs, and whether (and on which GPUs) a step
//! fits. Every step takes one slot; memory is reserved as declared; a GPU is
//! either taken whole or shared by memory.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::spec::{human_mib, Stage};

/// What one step of a stage needs on its agent, besides one slot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Needs {
    /// Capabilities the agent must have, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub memory_mb: u64,
    #[serde(default, skip_serializing_if = "is_zero32")]
    pub gpus: u32,
    /// Memory needed on each GPU; None takes each GPU whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_memory_mb: Option<u64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
fn is_zero32(n: &u32) -> bool {
    *n == 0
}

impl Needs {
    /// What each step of `stage` needs.
    pub fn of_stage(stage: &Stage) -> Needs {
        let mut labels = stage.labels.clone();
        labels.extend(stage.model.as_deref().map(model_label));
        labels.sort();
        labels.dedup();
        let r = stage.resources.clone().unwrap_or_default();
        let gpu_memory_mb = r.gpu_memory.map(|s| s.as_mib());
        let gpus = r.gpus.unwrap_or(u32::from(gpu_memory_mb.is_some()));
        Needs {
            labels,
            memory_mb: r.memory.map_or(0, |s| s.as_mib()),
            gpus,
            gpu_memory_mb: gpu_memory_mb.filter(|_| gpus > 0),
        }
    }

    /// The canonical text of these needs: equal needs, equal keys.
    pub fn key(&self) -> String {
        // Serializing plain fields cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The label of an agent where `model` can be resident, which a stage
/// declaring `model:` needs.
pub fn model_label(model: &str) -> String {
    format!("model:{model}")
}

impl fmt::Display for Needs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("1 slot")?;
        if self.memory_mb > 0 {
            write!(f, ", {} memory", human_mib(self.memory_mb))?;
        }
        match (self.gpus, self.gpu_memory_mb) {
            (0, _) => {}
            (n, None) => write!(f, ", {n} whole GPU{}", plural(n))?,
            (n, Some(m)) => write!(f, ", {n} GPU{} with {} free", plural(n), human_mib(m))?,
        }
        if !self.labels.is_empty() {
            write!(f, ", labels [{}]", self.labels.join(", "))?;
        }
        Ok(())
    }
}

fn plural(n: u32) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// One GPU of an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    /// The device index (`CUDA_VISIBLE_DEVICES`).
    pub index: u32,
    #[serde(default)]
    pub name: String,
    pub memory_mb: u64,
}

/// Everything an agent offers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub slots: u32,
    pub memory_mb: u64,
    #[serde(default)]
    pub gpus: Vec<Gpu>,
    #[serde(default)]
    pub labels: Vec<String>,
}

/// Memory taken on one GPU by one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuGrant {
    pub index: u32,
    pub memory_mb: u64,
}

/// What one running job holds on its agent (besides its slot).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    #[serde(default)]
    pub memory_mb: u64,
    #[serde(default)]
    pub gpus: Vec<GpuGrant>,
}

impl Grant {
    /// The GPU indices, for `CUDA_VISIBLE_DEVICES`.
    pub fn gpu_indices(&self) -> Vec<u32> {
        self.gpus.iter().map(|g| g.index).collect()
    }
}

/// One GPU's state on an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuFree {
    pub index: u32,
    pub total_mb: u64,
    pub free_mb: u64,
    /// How many running jobs use it.
    pub jobs: u32,
}

/// What an agent has free at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Free {
    pub slots: u32,
    pub slots_total: u32,
    pub memory_mb: u64,
    pub memory_total_mb: u64,
    pub gpus: Vec<GpuFree>,
}

impl fmt::Display for Free {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} slots, {} of {} memory free",
            self.slots,
            self.slots_total,
            human_mib(self.memory_mb),
            human_mib(self.memory_total_mb)
        )?;
        for g in &self.gpus {
            write!(
                f,
                ", GPU{} {} of {} free",
                g.index,
                human_mib(g.free_mb),
                human_mib(g.total_mb)
            )?;
        }
        Ok(())
    }
}

/// What `cap` has free while running jobs holding `held` (one slot each).
pub fn free<'a>(cap: &Capacity, held: impl IntoIterator<Item = &'a Grant>) -> Free {
    let mut out = Free {
        slots: cap.slots,
        slots_total: cap.slots,
        memory_mb: cap.memory_mb,
        memory_total_mb: cap.memory_mb,
        gpus: cap
            .gpus
            .iter()
            .map(|g| GpuFree {
                index: g.index,
                total_mb: g.memory_mb,
                free_mb: g.memory_mb,
                jobs: 0,
            })
            .collect(),
    };
    for h in held {
        out.take(h);
    }
    out
}

impl Free {
    /// Takes one slot and `g` (saturating: an agent that shrank between
    /// restarts shows nothing free rather than wrapping).
    pub fn take(&mut self, g: &Grant) {
        self.slots = self.slots.saturating_sub(1);
        self.memory_mb = self.memory_mb.saturating_sub(g.memory_mb);
        for gg in &g.gpus {
            if let Some(gpu) = self.gpus.iter_mut().find(|x| x.index == gg.index) {
                gpu.free_mb = gpu.free_mb.saturating_sub(gg.memory_mb);
                gpu.jobs += 1;
            }
        }
    }

    /// Gives back one slot and `g`.
    pub fn give(&mut self, g: &Grant) {
        self.slots = (self.slots + 1).min(self.slots_total);
        self.memory_mb = (self.memory_mb + g.memory_mb).min(self.memory_total_mb);
        for gg in &g.gpus {
            if let Some(gpu) = self.gpus.iter_mut().find(|x| x.index == gg.index) {
                gpu.free_mb = (gpu.free_mb + gg.memory_mb).min(gpu.total_mb);
                gpu.jobs = gpu.jobs.saturating_sub(1);
            }
        }
    }
}

/// Why a step does not fit on an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Misfit {
    /// The agent lacks a label the stage needs.
    Label { label: String },
    /// Every slot is taken.
    Slots { total: u32 },
    /// Not enough memory now (or ever, when `need > total`).
    Memory { need: u64, free: u64, total: u64 },
    /// Fewer GPUs than needed could ever fit (too few, or too small).
    GpusNever {
        need: u32,
        gpu_memory: Option<u64>,
        suitable: u32,
    },
    /// Enough GPUs exist, but not enough are free now.
    GpusBusy {
        need: u32,
        gpu_memory: Option<u64>,
        available: u32,
    },
    /// The slots left are reserved for higher-priority work.
    Reserved { slots: u32, min_priority: i32 },
}

impl Misfit {
    /// Whether the agent could never run the step, however idle it is.
    pub fn is_permanent(&self) -> bool {
        match self {
            Misfit::Label { .. } | Misfit::GpusNever { .. } => true,
            Misfit::Memory { need, total, .. } => need > total,
            Misfit::Slots { total } => *total == 0,
            Misfit::GpusBusy { .. } | Misfit::Reserved { .. } => false,
        }
    }
}

impl fmt::Display for Misfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The plural goes on "GPU", not after "... free".
        let gpus = |n: u32, m: &Option<u64>| match m {
            None => format!("{n} whole GPU{}", plural(n)),
            Some(m) => format!("{n} GPU{} with {} free", plural(n), human_mib(*m)),
        };
        match self {
            Misfit::Label { label } => write!(f, "lacks label {label:?}"),
            Misfit::Slots { total: 0 } => f.write_str("has no slots"),
            Misfit::Slots { total: 1 } => f.write_str("its only slot is in use"),
            Misfit::Slots { total } => write!(f, "all {total} slots in use"),
            Misfit::Memory { need, free, total } if need > total => write!(
                f,
                "needs {} memory, the agent has {} in all",
                human_mib(*need),
                human_mib(*total)
            ),
            Misfit::Memory { need, free, .. } => write!(
                f,
                "needs {} memory, {} free",
                human_mib(*need),
                human_mib(*free)
            ),
            Misfit::GpusNever {
                need,
                gpu_memory,
                suitable,
            } => write!(
                f,
                "needs {}, the agent has {suitable} such GPU{}",
                gpus(*need, gpu_memory),
                plural(*suitable)
            ),
            Misfit::GpusBusy {
                need,
                gpu_memory,
                available,
            } => write!(f, "needs {}, {available} free now", gpus(*need, gpu_memory)),
            Misfit::Reserved {
                slots: 1,
                min_priority,
            } => write!(
                f,
                "its last slot is reserved for priority {min_priority} and above"
            ),
            Misfit::Reserved {
                slots,
                min_priority,
            } => write!(
                f,
                "its last {slots} slots are reserved for priority {min_priority} and above"
            ),
        }
    }
}

/// Whether `needs` fits on an agent with `labels` that has `free` now, and
/// with which grant. Permanent reasons are reported before momentary ones,
/// so the first reason is the one that matters.
pub fn fit(needs: &Needs, labels: &[String], free: &Free) -> Result<Grant, Misfit> {
    if let Some(l) = needs.labels.iter().find(|l| !labels.contains(l)) {
        return Err(Misfit::Label { label: l.clone() });
    }
    if needs.memory_mb > free.memory_total_mb {
        return Err(Misfit::Memory {
            need: needs.memory_mb,
            free: free.memory_mb,
            total: free.memory_total_mb,
        });
    }
    // No slots at all is permanent, so it must come before the GPUs, which
    // may still be busy with jobs from before the agent shrank.
    if free.slots_total == 0 {
        return Err(Misfit::Slots { total: 0 });
    }
    let gpus = gpu_fit(needs, free)?;
    if free.slots == 0 {
        return Err(Misfit::Slots {
            total: free.slots_total,
        });
    }
    if needs.memory_mb > free.memory_mb {
        return Err(Misfit::Memory {
            need: needs.memory_mb,
            free: free.memory_mb,
            total: free.memory_total_mb,
        });
    }
    Ok(Grant {
        memory_mb: needs.memory_mb,
        gpus,
    })
}

/// Picks the GPUs: the fullest ones that still fit (best fit), so that
/// shared GPUs fill up before whole ones are broken into.
fn gpu_fit(needs: &Needs, free: &Free) -> Result<Vec<GpuGrant>, Misfit> {
    if needs.gpus == 0 {
        return Ok(Vec::new());
    }
    let suitable = free
        .gpus
        .iter()
        .filter(|g| needs.gpu_memory_mb.is_none_or(|m| g.total_mb >= m))
        .count() as u32;
    if suitable < needs.gpus {
        return Err(Misfit::GpusNever {
            need: needs.gpus,
            gpu_memory: needs.gpu_memory_mb,
            suitable,
        });
    }
    let mut open: Vec<&GpuFree> = free
        .gpus
        .iter()
        .filter(|g| match needs.gpu_memory_mb {
            None => g.jobs == 0,
            Some(m) => g.free_mb >= m,
        })
        .collect();
    if (open.len() as u32) < needs.gpus {
        return Err(Misfit::GpusBusy {
            need: needs.gpus,
            gpu_memory: needs.gpu_memory_mb,
            available: open.len() as u32,
        });
    }
    open.sort_by_key(|g| (g.free_mb, g.index));
    Ok(open
        .into_iter()
        .take(needs.gpus as usize)
        .map(|g| GpuGrant {
            index: g.index,
            memory_mb: needs.gpu_memory_mb.unwrap_or(g.total_mb),
        })
        .collect())
}

/// Whether an idle agent with `cap` could ever run a step needing `needs`.
pub fn could_ever_fit(needs: &Needs, cap: &Capacity) -> Result<(), Misfit> {
    let idle = free(cap, []);
    fit(needs, &cap.labels, &idle).map(|_| ())
}
