//! The workflow watcher: keeps the [`Catalog`] equal to the watched
//! projects' `.orchestrator/workflows/` directories.
//!
//! Each directory (not each file, so files created later and editors'
//! write-then-rename are seen) is watched through inotify (the `notify`
//! crate). Events only say "this project changed"; after a quiet spell of
//! [`DEBOUNCE`] (editors write a burst: temp file, rename, attributes) the
//! whole directory is read again and every file's text handed to the
//! catalog, which ignores texts it has already seen. There is no timer
//! otherwise: nothing happens until the kernel reports a change.
//!
//! The directory's parent (`.orchestrator/`) is watched too, so a
//! workflows directory removed and made again is seen, and watched again
//! before it is read. Files in subdirectories are not read.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher as _};
use orchestrator_host::confined::DefinitionError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::catalog::{is_workflow_file, Catalog, Reload, WORKFLOWS_DIR};

/// How long a project's directory must be quiet before it is read again.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// The longest a steady stream of events delays a reading.
const MAX_DELAY: Duration = Duration::from_secs(1);

/// Why watching could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("project {dir}: {source}; expected an existing project directory")]
    Project {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start watching workflow files: {0}")]
    Start(notify::Error),
    #[error("cannot watch {dir}: {source}")]
    Notify { dir: PathBuf, source: notify::Error },
}

/// A started watch: the kernel's watches, and the projects they report.
pub struct Watch {
    // Dropping it ends the kernel's watches.
    watcher: notify::RecommendedWatcher,
    changed: mpsc::Receiver<PathBuf>,
    /// Set when a report did not fit the channel: every project is read.
    overflow: Arc<AtomicBool>,
    catalog: Arc<Mutex<Catalog>>,
}

/// The catalog behind its lock. A panic while it was held cannot leave it
/// half-changed (each reload replaces whole entries), so a poisoned lock is
/// used as it is.
pub fn lock(c: &Mutex<Catalog>) -> std::sync::MutexGuard<'_, Catalog> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

/// Canonical project directories (the form runs record), each with its
/// workflows directory made when missing.
pub fn projects(dirs: &[PathBuf]) -> Result<Vec<PathBuf>, WatchError> {
    let mut out = Vec::new();
    for dir in dirs {
        let p = std::fs::canonicalize(dir).map_err(|source| WatchError::Project {
            dir: dir.clone(),
            source,
        })?;
        std::fs::create_dir_all(p.join(WORKFLOWS_DIR)).map_err(|source| WatchError::Project {
            dir: p.clone(),
            source,
        })?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

/// Starts watching `projects` (canonical, from [`projects`]) and loads
/// what they hold now. The kernel's watches come first, so a change made
/// while the first reading goes on is not missed.
pub fn start(catalog: Arc<Mutex<Catalog>>, projects: &[PathBuf]) -> Result<Watch, WatchError> {
    let (tx, changed) = mpsc::channel(256);
    let overflow = Arc::new(AtomicBool::new(false));
    let dirs: Vec<(PathBuf, PathBuf)> = projects
        .iter()
        .map(|p| (p.join(WORKFLOWS_DIR), p.clone()))
        .collect();
    let flag = overflow.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let ev = match res {
            Ok(ev) => ev,
            Err(e) => {
                // The kernel's queue overflowed or a watch broke: read all.
                tracing::warn!(error = %e, "workflow watch error; reading every project again");
                flag.store(true, Ordering::Relaxed);
                let _ = tx.try_send(PathBuf::new());
                return;
            }
        };
        if matches!(ev.kind, EventKind::Access(a) if a != AccessKind::Close(AccessMode::Write)) {
            return;
        }
        for path in &ev.paths {
            let Some((_, project)) = dirs.iter().find(|(d, _)| {
                path == d || (path.parent() == Some(d.as_path()) && is_workflow_file(path))
            }) else {
                continue;
            };
            if tx.try_send(project.clone()).is_err() {
                // Full: the reader is behind and will read every project.
                flag.store(true, Ordering::Relaxed);
            }
        }
    })
    .map_err(WatchError::Start)?;
    for p in projects {
        let dir = p.join(WORKFLOWS_DIR);
        // The parent reports the directory itself going and coming back.
        for d in [dir.parent().unwrap_or(p), &dir] {
            watcher
                .watch(d, RecursiveMode::NonRecursive)
                .map_err(|source| WatchError::Notify {
                    dir: d.to_path_buf(),
                    source,
                })?;
        }
        lock(&catalog).add_project(p);
    }
    for p in projects {
        scan(&catalog, p);
    }
    Ok(Watch {
        watcher,
        changed,
        overflow,
        catalog,
    })
}

/// Reads `project`'s workflows directory and hands every file to the
/// catalog; files it knew that are gone are removed. Logs what changed.
pub fn scan(catalog: &Mutex<Catalog>, project: &Path) {
    let dir = project.join(WORKFLOWS_DIR);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| is_workflow_file(p) && !p.is_dir())
            .collect(),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read the workflows directory; its definitions are kept");
            return;
        }
    };
    files.sort();
    // Read outside the lock; a file that vanished meanwhile reads as gone.
    let mut reads: Vec<(PathBuf, Result<Option<String>, DefinitionError>)> = files
        .into_iter()
        .map(|f| {
            // Committed files: regular, bounded, never read through a link.
            let r = orchestrator_host::confined::read_definition(
                &f,
                orchestrator_host::confined::MAX_DEFINITION_BYTES,
                orchestrator_host::confined::Links::Refuse,
            );
            (f, r)
        })
        .collect();
    let now = orchestrator_host::now_ms();
    let mut c = lock(catalog);
    for known in c.files(project) {
        if !reads.iter().any(|(f, _)| *f == known) {
            reads.push((known, Ok(None)));
        }
    }
    for (file, read) in reads {
        let r = c.reload(project, &file, read, now);
        log(&file, &r);
    }
}

fn log(file: &Path, r: &Reload) {
    let file = file.display();
    match r {
        Reload::Unchanged => {}
        Reload::Loaded {
            name,
            hash,
            previous,
        } => {
            let verb = if previous.is_some() {
                "reloaded"
            } else {
                "loaded"
            };
            tracing::info!(workflow = %name, %file, "workflow {name} {verb} from {file} (sha256 {}…)", &hash[..12]);
            if let Some(p) = previous.as_deref().filter(|p| *p != name) {
                tracing::info!(%file, "workflow {p} is now called {name}: runs by the name {p} are refused");
            }
        }
        Reload::Invalid {
            kept: Some(name),
            error,
        } => {
            tracing::warn!(workflow = %name, %file, "workflow {name}: {file} is not valid; the old definition is kept: {error}");
        }
        Reload::Invalid { kept: None, error } => {
            tracing::warn!(%file, "workflow file {file} is not valid; no definition is loaded from it: {error}");
        }
        Reload::Removed { name: Some(name) } => {
            tracing::info!(workflow = %name, %file, "workflow {name} removed: {file} was deleted");
        }
        Reload::Removed { name: None } => {
            tracing::info!(%file, "workflow file {file} was deleted");
        }
    }
}

impl Watch {
    /// Watches `project`'s workflows directory again: after it was removed
    /// and made again, the old watch went with the old directory. On a
    /// directory still watched this changes nothing.
    fn watch_again(&mut self, project: &Path) {
        let dir = project.join(WORKFLOWS_DIR);
        if !dir.is_dir() {
            return;
        }
        if let Err(e) = self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the workflows directory again; edits are seen after a restart");
        }
    }

    /// Reads projects again as their directories change, until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        loop {
            let first = tokio::select! {
                _ = stop.cancelled() => return,
                p = self.changed.recv() => match p {
                    Some(p) => p,
                    None => return,
                },
            };
            let mut dirty = BTreeSet::from([first]);
            let began = Instant::now();
            // Quiet for DEBOUNCE, or MAX_DELAY in all.
            while began.elapsed() < MAX_DELAY {
                match tokio::time::timeout(DEBOUNCE, self.changed.recv()).await {
                    Ok(Some(p)) => {
                        dirty.insert(p);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            if self.overflow.swap(false, Ordering::Relaxed) {
                dirty.extend(lock(&self.catalog).projects());
            }
            dirty.remove(Path::new(""));
            for p in &dirty {
                self.watch_again(p);
            }
            let catalog = self.catalog.clone();
            // Reading files blocks; it is short, but not the runtime's to wait on.
            let done = tokio::task::spawn_blocking(move || {
                for p in dirty {
                    scan(&catalog, &p);
                }
            })
            .await;
            if let Err(e) = done {
                tracing::error!(error = %e, "reading the workflows failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::hash;

    fn wf(word: &str) -> String {
        format!("name: w\nstages:\n  - id: a\n    steps:\n      - commands:\n          - argv: [echo, {word}]\n")
    }

    /// Polls the catalog until `f` holds (at most 20 s): no fixed sleep.
    async fn until(c: &Mutex<Catalog>, what: &str, f: impl Fn(&Catalog) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f(&lock(c)) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_burst_of_writes_ends_on_the_last_text_and_later_files_are_seen() {
        let tmp = tempfile::tempdir().unwrap();
        let projects = projects(&[tmp.path().to_path_buf()]).unwrap();
        let p = projects[0].clone();
        let dir = p.join(WORKFLOWS_DIR);
        assert!(dir.is_dir(), "the workflows folder is made when missing");
        std::fs::write(dir.join("w.yaml"), wf("zero")).unwrap();
        let catalog = Arc::new(Mutex::new(Catalog::default()));
        let watch = start(catalog.clone(), &projects).unwrap();
        assert_eq!(
            lock(&catalog).resolve(&p, "w").unwrap().hash,
            hash(&wf("zero"))
        );
        let stop = CancellationToken::new();
        let task = tokio::spawn(watch.run(stop.clone()));

        // An editor's burst: many writes in place and through renames.
        for i in 0..30 {
            let text = wf(&format!("v{i}"));
            if i % 2 == 0 {
                std::fs::write(dir.join("w.yaml"), text).unwrap();
            } else {
                std::fs::write(dir.join(".w.yaml.swp"), &text).unwrap();
                std::fs::rename(dir.join(".w.yaml.swp"), dir.join("w.yaml")).unwrap();
            }
        }
        let last = hash(&wf("v29"));
        until(&catalog, "the last text", |c| {
            c.resolve(&p, "w").is_ok_and(|d| d.hash == last)
        })
        .await;
        assert_eq!(
            lock(&catalog).list().len(),
            1,
            "the swap file is no workflow"
        );

        // A file that did not exist when watching began.
        std::fs::write(dir.join("later.json"), r#"{"name": "later", "stages": [{"id": "a", "steps": [{"commands": [{"argv": ["true"]}]}]}]}"#).unwrap();
        until(&catalog, "the new file", |c| c.resolve(&p, "later").is_ok()).await;
        std::fs::remove_file(dir.join("later.json")).unwrap();
        until(&catalog, "the removal", |c| c.resolve(&p, "later").is_err()).await;

        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_workflows_directory_removed_and_made_again_is_watched_again() {
        let tmp = tempfile::tempdir().unwrap();
        let projects = projects(&[tmp.path().to_path_buf()]).unwrap();
        let p = projects[0].clone();
        let dir = p.join(WORKFLOWS_DIR);
        std::fs::write(dir.join("w.yaml"), wf("zero")).unwrap();
        let catalog = Arc::new(Mutex::new(Catalog::default()));
        let watch = start(catalog.clone(), &projects).unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(watch.run(stop.clone()));

        // (A directory that cannot be read keeps its definitions.)
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("w.yaml"), wf("one")).unwrap();
        let one = hash(&wf("one"));
        until(&catalog, "the file in the new directory", |c| {
            c.resolve(&p, "w").is_ok_and(|d| d.hash == one)
        })
        .await;
        // Edits in it are seen: it is watched, not only read once.
        std::fs::write(dir.join("w.yaml"), wf("two")).unwrap();
        let two = hash(&wf("two"));
        until(&catalog, "an edit in the new directory", |c| {
            c.resolve(&p, "w").is_ok_and(|d| d.hash == two)
        })
        .await;

        stop.cancel();
        task.await.unwrap();
    }

    #[test]
    fn a_missing_project_is_refused() {
        let e = projects(&[PathBuf::from("/nonexistent/orch-project")])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("/nonexistent/orch-project"), "{e}");
    }
}
