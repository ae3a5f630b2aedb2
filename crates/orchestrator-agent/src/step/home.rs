//! What a step brings in from the host, and the home it writes to.
//!
//! A sandbox hides the agent's home, `/tmp` and the orchestrator's own
//! directories, so a step does not find the user's tools (a venv, `~/.cargo`,
//! an agent's configuration). A stage names the host paths it needs in
//! `mounts:`; the agent binds each read-only at its own path when it lies
//! under a path the agent allows (`orch agent --allow-mount`) and holds no
//! directory of the orchestrator's. Each stage of a run also gets a home of
//! its own, writable and kept between its steps
//! (`.orchestrator/homes/<run>/<stage>`, hidden from every other step), with
//! a git identity, and a link in it for each `~/...` mount, so that tools
//! that look in `$HOME` find what was mounted.

use std::io::Write;
use std::path::{Path, PathBuf};

use orchestrator_host::confined::ConfinedDir;

/// A stage's mounts resolved on this agent: the host paths to bind, and
/// the `~/...` ones by their place in the home.
#[derive(Debug, Default)]
pub(super) struct Mounts {
    pub paths: Vec<PathBuf>,
    /// (path under the home, host path) for each `~/...` mount.
    pub in_home: Vec<(PathBuf, PathBuf)>,
}

/// Resolves and checks `mounts` (from the job) against `allowed` and the
/// orchestrator's `private` directories; an error names the field and what
/// to do.
pub(super) fn resolve(
    mounts: &[String],
    allowed: &[PathBuf],
    private: &[PathBuf],
) -> Result<Mounts, String> {
    let mut out = Mounts::default();
    if mounts.is_empty() {
        return Ok(out);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let allowed: Vec<PathBuf> = allowed
        .iter()
        .map(|a| match (a.strip_prefix("~"), &home) {
            (Ok(rest), Some(h)) => h.join(rest),
            _ => a.clone(),
        })
        .filter_map(|a| std::fs::canonicalize(a).ok())
        .collect();
    let private: Vec<PathBuf> = private
        .iter()
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
        .chain([PathBuf::from("/run/orch")])
        .collect();
    for (j, m) in mounts.iter().enumerate() {
        let field = format!("mounts[{j}] {m:?}");
        let (path, in_home) = match m.strip_prefix("~/") {
            Some(rest) => match &home {
                Some(h) => (h.join(rest), Some(PathBuf::from(rest))),
                None => return Err(format!("{field}: this agent has no HOME to find it in")),
            },
            None => (PathBuf::from(m), None),
        };
        let real = std::fs::canonicalize(&path).map_err(|e| {
            format!(
                "{field}: {} cannot be mounted on this agent: {e}",
                path.display()
            )
        })?;
        if !real.is_dir() {
            return Err(format!(
                "{field}: {} is not a directory; expected a directory to bind read-only",
                real.display()
            ));
        }
        if !allowed.iter().any(|a| real.starts_with(a)) {
            return Err(format!(
                "{field}: {} is not under a path this agent allows to be mounted; its operator allows it with `orch agent --allow-mount {}`{}",
                real.display(),
                real.display(),
                if allowed.is_empty() {
                    " (this agent allows none)".to_owned()
                } else {
                    format!(
                        " (this agent allows {})",
                        allowed
                            .iter()
                            .map(|a| a.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            ));
        }
        if let Some(p) = private
            .iter()
            .find(|p| real.starts_with(p) || p.starts_with(&real))
        {
            return Err(format!(
                "{field}: {} holds or lies in {}, a directory of the orchestrator's own, which no step may see",
                real.display(),
                p.display()
            ));
        }
        if let Some(rel) = in_home {
            out.in_home.push((rel, real.clone()));
        }
        out.paths.push(real);
    }
    out.paths.sort();
    out.paths.dedup();
    Ok(out)
}

/// Makes (or opens) the stage's home under `project`, writes its git
/// identity when missing, and links each `~/...` mount into it.
pub(super) fn prepare(
    project: &Path,
    run_id: &str,
    stage_id: &str,
    mounts: &Mounts,
) -> Result<PathBuf, String> {
    let rel = Path::new(".orchestrator/homes").join(run_id).join(stage_id);
    let home = ConfinedDir::open(project, &rel, true)
        .map_err(|e| format!("making the step's home: {e}"))?;
    // The step writes its home: the agent makes its files afresh, through
    // the directory, never following what the step left.
    if !home.holds_name(".gitconfig") {
        let mut f = home
            .create(".gitconfig")
            .map_err(|e| format!("writing the step's git identity: {e}"))?;
        let text = "[user]\n\tname = orch step\n\temail = step@orch.invalid\n[init]\n\tdefaultBranch = main\n";
        f.write_all(text.as_bytes())
            .map_err(|e| format!("writing the step's git identity: {e}"))?;
    }
    for (rel, host) in &mounts.in_home {
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name().and_then(|n| n.to_str()))
        else {
            continue;
        };
        let mut dir = home.clone();
        for part in parent.iter() {
            let part = part
                .to_str()
                .ok_or_else(|| format!("~/{}: not UTF-8", rel.display()))?;
            dir = dir
                .subdir(part, true)
                .map_err(|e| format!("linking ~/{} into the step's home: {e}", rel.display()))?;
        }
        dir.link(name, host)
            .map_err(|e| format!("linking ~/{} into the step's home: {e}", rel.display()))?;
    }
    Ok(home.path().to_owned())
}
