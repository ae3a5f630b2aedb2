//! A stage's caches around its steps: restored before its first step's
//! commands, saved after the step whose success ends the stage (see
//! [`orchestrator_core::api::CachePlan`]), in the project's cache store
//! ([`crate::cache`]). A miss is no failure, nor is a save that cannot be
//! made (too large, nothing there): the manifest records each. What fails
//! the step is a path the agent will not write through: a link on the way
//! to the cache path, or a `~/` cache in a step that has no home of its own.

use orchestrator_core::RunId;
use std::path::{Path, PathBuf};
use std::time::Instant;

use orchestrator_core::api::{CachePlan, CacheRecord, JobSpec};
use orchestrator_core::cache::{check_path, slot, PathError, Root};

use crate::cache::{CacheError, CacheStore, CopyError, EntryMeta, Found, Saved};
use orchestrator_host::confined::{ConfinedDir, ConfinedError};

/// Why a cache entry is not restored (the step fails) or not saved (the
/// manifest notes it).
#[derive(Debug, thiserror::Error)]
pub(super) enum CacheStepError {
    #[error("restoring the stage's caches: {0}")]
    Join(#[source] tokio::task::JoinError),
    #[error("cache[{j}] path {path:?} {source}")]
    Path {
        j: usize,
        path: String,
        #[source]
        source: PathError,
    },
    /// A `~/` entry in a step that keeps the agent's home.
    #[error("cache[{j}] path {path:?}: a process step keeps the agent's own home, so a ~/ cache has nowhere to go; use a worktree path or another sandbox")]
    NoHome { j: usize, path: String },
    /// The way to the entry's path is not the step's own (a link on it).
    #[error("cache[{j}] path {path:?}: {source}")]
    Confined {
        j: usize,
        path: String,
        #[source]
        source: ConfinedError,
    },
    #[error("this agent saves no caches (orch agent --cache-max 0)")]
    NotSaving,
    #[error("nothing at {path:?} to save")]
    Nothing { path: String },
    /// The entry's path cannot be opened to be saved.
    #[error(transparent)]
    Open(ConfinedError),
    #[error("the caches directory cannot be made")]
    NoStore,
    #[error(transparent)]
    Store(CacheError),
    #[error("{path:?} is too large to keep: {source}")]
    TooLarge {
        path: String,
        #[source]
        source: CopyError,
    },
}

/// One step's view of its stage's caches.
#[derive(Debug, Default)]
pub(super) struct Caches {
    plan: Option<CachePlan>,
    project: PathBuf,
    worktree: PathBuf,
    /// The stage's home; None for a `process` step, which keeps the agent's.
    home: Option<PathBuf>,
    /// The most bytes one saved entry holds (0: nothing is saved).
    max: u64,
    /// One per entry, in the plan's order.
    pub records: Vec<CacheRecord>,
    /// Which entries were restored under their own key (never saved again).
    exact: Vec<bool>,
}

impl Caches {
    pub(super) fn new(
        spec: &JobSpec,
        project: &Path,
        worktree: &Path,
        home: Option<&Path>,
        max: u64,
    ) -> Self {
        let plan = spec.cache.clone().filter(|p| !p.entries.is_empty());
        let records = plan
            .iter()
            .flat_map(|p| &p.entries)
            .map(|c| CacheRecord {
                path: c.path.clone(),
                key: c.key.clone(),
                restored: None,
                restored_key: None,
                saved: None,
                bytes: 0,
                ms: 0,
                note: None,
            })
            .collect::<Vec<_>>();
        Caches {
            exact: vec![false; records.len()],
            records,
            plan,
            project: project.to_owned(),
            worktree: worktree.to_owned(),
            home: home.map(Path::to_owned),
            max,
        }
    }

    /// Restores every entry when this step is the stage's first; an error
    /// is the step's failure, in words naming the entry.
    pub(super) async fn restore(self) -> (Self, Result<(), CacheStepError>) {
        if !self.plan.as_ref().is_some_and(|p| p.restore) {
            return (self, Ok(()));
        }
        let mut me = self;
        match tokio::task::spawn_blocking(move || {
            let r = me.restore_all();
            (me, r)
        })
        .await
        {
            Ok(done) => done,
            Err(e) => (Caches::default(), Err(CacheStepError::Join(e))),
        }
    }

    /// Saves every entry not restored under its own key, when this step
    /// ends the stage. Never fails the step.
    pub(super) async fn save(self, spec: &JobSpec) -> Self {
        if !self.plan.as_ref().is_some_and(|p| p.save) {
            return self;
        }
        let (run_id, stage_id) = (spec.run_id.clone(), spec.stage_id.clone());
        let mut me = self;
        match tokio::task::spawn_blocking(move || {
            me.save_all(&run_id, &stage_id);
            me
        })
        .await
        {
            Ok(me) => me,
            Err(e) => {
                tracing::warn!(error = %e, "saving the stage's caches");
                Caches::default()
            }
        }
    }

    /// The directory an entry lives in and its path below it.
    fn place<'a>(&self, j: usize, path: &'a str) -> Result<(&Path, &'a str), CacheStepError> {
        let (root, rel) = check_path(path).map_err(|source| CacheStepError::Path {
            j,
            path: path.to_owned(),
            source,
        })?;
        match root {
            Root::Worktree => Ok((&self.worktree, rel)),
            Root::Home => {
                self.home
                    .as_deref()
                    .map(|h| (h, rel))
                    .ok_or_else(|| CacheStepError::NoHome {
                        j,
                        path: path.to_owned(),
                    })
            }
        }
    }

    fn restore_all(&mut self) -> Result<(), CacheStepError> {
        let entries = self
            .plan
            .as_ref()
            .map(|p| p.entries.clone())
            .unwrap_or_default();
        let store = match CacheStore::open(&self.project, false) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "the project's caches cannot be read; every entry misses");
                None
            }
        };
        for (j, c) in entries.iter().enumerate() {
            let (base, rel) = self.place(j, &c.path)?;
            let base = base.to_owned();
            let slot = slot(&c.path);
            let started = Instant::now();
            let found = match &store {
                None => Found::Miss,
                Some(s) => s.find(&slot, &c.key, &c.restore_keys).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, path = %c.path, "looking up a cache entry");
                    Found::Miss
                }),
            };
            let (how, meta) = match found {
                Found::Exact(m) => ("exact", m),
                Found::Prefix(m) => ("prefix", m),
                Found::Miss => {
                    self.records[j].restored = Some("miss".into());
                    tracing::info!(path = %c.path, key = %c.key, "cache miss");
                    continue;
                }
            };
            let (parent_rel, name) = rel.rsplit_once('/').unwrap_or(("", rel));
            // The way to the path is the step's (or the repository's): a
            // link there is refused, never followed.
            let parent =
                ConfinedDir::open(&base, Path::new(parent_rel), true).map_err(|source| {
                    CacheStepError::Confined {
                        j,
                        path: c.path.clone(),
                        source,
                    }
                })?;
            let Some(store) = &store else { continue };
            match store.restore(&slot, &meta.key, &parent, name) {
                Ok(copied) => {
                    let r = &mut self.records[j];
                    r.restored = Some(how.into());
                    r.restored_key = Some(meta.key.clone());
                    r.bytes = copied.bytes;
                    r.ms = millis(started);
                    self.exact[j] = how == "exact";
                    tracing::info!(path = %c.path, key = %meta.key, how, bytes = copied.bytes, ms = r.ms, "cache restored");
                }
                Err(CacheError::Confined(source)) => {
                    return Err(CacheStepError::Confined {
                        j,
                        path: c.path.clone(),
                        source,
                    })
                }
                Err(e) => {
                    tracing::warn!(error = %e, path = %c.path, "restoring a cache entry failed; taken as a miss");
                    let r = &mut self.records[j];
                    r.restored = Some("miss".into());
                    r.note = Some(format!("entry {} could not be restored: {e}", meta.key));
                }
            }
        }
        Ok(())
    }

    fn save_all(&mut self, run_id: &RunId, stage_id: &str) {
        let entries = self
            .plan
            .as_ref()
            .map(|p| p.entries.clone())
            .unwrap_or_default();
        for (j, c) in entries.iter().enumerate() {
            let started = Instant::now();
            let outcome = self.save_one(j, c, run_id, stage_id);
            let r = &mut self.records[j];
            match outcome {
                Ok((what, bytes)) => {
                    r.saved = Some(what.into());
                    if what == "saved" {
                        r.bytes = bytes;
                        r.ms = millis(started);
                    }
                }
                Err(why) => {
                    tracing::warn!(path = %c.path, key = %c.key, "cache not saved: {why}");
                    r.saved = Some("not saved".into());
                    r.note = Some(why.to_string());
                }
            }
        }
    }

    fn save_one(
        &self,
        j: usize,
        c: &orchestrator_core::spec::Cache,
        run_id: &RunId,
        stage_id: &str,
    ) -> Result<(&'static str, u64), CacheStepError> {
        if self.exact[j] {
            return Ok(("skipped", 0));
        }
        if self.max == 0 {
            return Err(CacheStepError::NotSaving);
        }
        let nothing = || CacheStepError::Nothing {
            path: c.path.clone(),
        };
        let (base, rel) = self.place(j, &c.path)?;
        let src = match ConfinedDir::open(base, Path::new(rel), false) {
            Ok(d) => d,
            Err(e) if e.is_not_found() => return Err(nothing()),
            Err(e) => return Err(CacheStepError::Open(e)),
        };
        let store = CacheStore::open(&self.project, true)
            .map_err(CacheStepError::Store)?
            .ok_or(CacheStepError::NoStore)?;
        let meta = EntryMeta {
            path: c.path.clone(),
            key: c.key.clone(),
            saved_at_ms: orchestrator_host::now_ms(),
            bytes: 0,
            files: 0,
            run_id: run_id.to_owned(),
            stage_id: stage_id.to_owned(),
        };
        match store.save(&slot(&c.path), &src, meta, self.max) {
            Ok(Saved::Saved(copied)) => {
                tracing::info!(path = %c.path, key = %c.key, bytes = copied.bytes, files = copied.files, skipped = copied.skipped, "cache saved");
                Ok(("saved", copied.bytes))
            }
            Ok(Saved::Kept) => Ok(("kept", 0)),
            Ok(Saved::Nothing) => Err(nothing()),
            Err(CacheError::Copy(source @ CopyError::TooLarge { .. })) => {
                Err(CacheStepError::TooLarge {
                    path: c.path.clone(),
                    source,
                })
            }
            Err(e) => Err(CacheStepError::Store(e)),
        }
    }
}

fn millis(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}
