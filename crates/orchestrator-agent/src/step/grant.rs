//! What a step's commands are told about the memory and GPUs the daemon
//! placed the step on, so that they use those and no others.

use orchestrator_core::sched::Grant;

/// The variables a step gets from its grant, and the names it must not
/// inherit from the agent (an agent started inside another step would
/// otherwise pass that step's grant on).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct GrantEnv {
    pub set: Vec<(String, String)>,
    pub unset: Vec<String>,
}

/// The environment for `grant` on an agent that has GPUs or not.
///
/// Granted GPUs go into `CUDA_VISIBLE_DEVICES` (and `ORCH_GPUS`) by the
/// index `nvidia-smi` shows, which is PCI bus order: `CUDA_DEVICE_ORDER` is
/// set to match, since CUDA's default order may differ on mixed machines. A
/// step granted no GPU on an agent that has some gets an empty
/// `CUDA_VISIBLE_DEVICES`, which hides them all; on an agent without GPUs
/// the variable is left as the agent has it. `ORCH_MEMORY_MB` is the memory
/// reserved for the step, when it reserved any.
pub(super) fn grant_env(grant: &Grant, agent_has_gpus: bool) -> GrantEnv {
    let mut env = GrantEnv::default();
    let indices: Vec<String> = grant
        .gpu_indices()
        .iter()
        .map(ToString::to_string)
        .collect();
    if indices.is_empty() {
        if agent_has_gpus {
            env.set.push(("CUDA_VISIBLE_DEVICES".into(), String::new()));
        }
        env.unset.push("ORCH_GPUS".into());
    } else {
        let list = indices.join(",");
        env.set
            .push(("CUDA_DEVICE_ORDER".into(), "PCI_BUS_ID".into()));
        env.set.push(("CUDA_VISIBLE_DEVICES".into(), list.clone()));
        env.set.push(("ORCH_GPUS".into(), list));
    }
    if grant.memory_mb > 0 {
        env.set
            .push(("ORCH_MEMORY_MB".into(), grant.memory_mb.to_string()));
    } else {
        env.unset.push("ORCH_MEMORY_MB".into());
    }
    env
}

#[cfg(test)]
mod tests {
    use orchestrator_core::sched::GpuGrant;

    use super::*;

    fn pairs(env: &[(&str, &str)]) -> Vec<(String, String)> {
        env.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn granted_gpus_and_memory_are_announced() {
        let grant = Grant {
            memory_mb: 8192,
            gpus: vec![
                GpuGrant {
                    index: 1,
                    memory_mb: 24576,
                },
                GpuGrant {
                    index: 3,
                    memory_mb: 24576,
                },
            ],
        };
        for has_gpus in [true, false] {
            assert_eq!(
                grant_env(&grant, has_gpus),
                GrantEnv {
                    set: pairs(&[
                        ("CUDA_DEVICE_ORDER", "PCI_BUS_ID"),
                        ("CUDA_VISIBLE_DEVICES", "1,3"),
                        ("ORCH_GPUS", "1,3"),
                        ("ORCH_MEMORY_MB", "8192"),
                    ]),
                    unset: vec![],
                }
            );
        }
    }

    #[test]
    fn a_step_without_a_gpu_is_hidden_from_the_agent_s_gpus() {
        assert_eq!(
            grant_env(&Grant::default(), true),
            GrantEnv {
                set: pairs(&[("CUDA_VISIBLE_DEVICES", "")]),
                unset: names(&["ORCH_GPUS", "ORCH_MEMORY_MB"]),
            }
        );
    }

    #[test]
    fn an_agent_without_gpus_leaves_cuda_alone() {
        let grant = Grant {
            memory_mb: 512,
            gpus: vec![],
        };
        assert_eq!(
            grant_env(&grant, false),
            GrantEnv {
                set: pairs(&[("ORCH_MEMORY_MB", "512")]),
                unset: names(&["ORCH_GPUS"]),
            }
        );
    }
}
