//! A stage's caches on the agent: restored before the first step, saved
//! after the last, copied both ways without ever following a link a step
//! left, capped, atomic, and never changed once saved.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use orchestrator_agent::cache::{CacheStore, EntryMeta, Found, Saved};
use orchestrator_core::api::{CachePlan, ClaimedJob, SandboxSpec, StepOutcome};
use orchestrator_core::cache::slot;
use orchestrator_core::error::ErrorClass;
use orchestrator_core::spec::{Cache, SandboxKind};
use orchestrator_host::confined::ConfinedDir;
use tokio_util::sync::CancellationToken;

mod common;

use common::sandboxed::{sh, spec, Project};

fn backends() -> Vec<SandboxSpec> {
    common::sandboxed::backends(&[(SandboxKind::Bubblewrap, "bwrap", "bubblewrap")])
}

fn cache(path: &str, key: &str, restore_keys: &[&str]) -> Cache {
    Cache {
        path: path.into(),
        key: key.into(),
        restore_keys: restore_keys.iter().map(|s| s.to_string()).collect(),
    }
}

/// A one-step stage's job (it restores and saves) running `script`.
fn job(p: &Project, sandbox: SandboxSpec, entries: Vec<Cache>, script: &str) -> ClaimedJob {
    let mut job = p.job(sandbox, vec![sh(script)]);
    job.spec.cache = Some(CachePlan {
        entries,
        restore: true,
        save: true,
    });
    job
}

async fn run(p: &Project, job: &ClaimedJob) -> StepOutcome {
    p.run_job(job, CancellationToken::new()).await
}

fn entry_dir(p: &Project, path: &str, key: &str) -> PathBuf {
    p.root()
        .join(".orchestrator/caches")
        .join(slot(path))
        .join(key)
}

/// Every name under `dir`, relative, with `/` after directories and `@`
/// after links; what a test compares trees by.
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(list) = fs::read_dir(dir) else { return };
        for e in list.flatten() {
            let rel = e.path().strip_prefix(base).unwrap().display().to_string();
            let t = e.file_type().unwrap();
            if t.is_symlink() {
                out.push(format!("{rel}@"));
            } else if t.is_dir() {
                out.push(format!("{rel}/"));
                walk(base, &e.path(), out);
            } else {
                out.push(rel);
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn tmp_is_empty(p: &Project) -> bool {
    listing(&p.root().join(".orchestrator/caches/.tmp")).is_empty()
}

#[tokio::test]
async fn a_later_step_restores_what_was_saved_and_its_writes_never_reach_the_entry() {
    for sandbox in backends() {
        let p = Project::new();
        let entries = vec![
            cache(".venv", "deps-1", &[]),
            cache("~/.cache/tool", "tool-1", &[]),
        ];
        let first = job(
            &p,
            sandbox.clone(),
            entries.clone(),
            "test ! -e .venv && mkdir -p .venv/lib \"$HOME/.cache/tool\" && echo pkg-1 > .venv/lib/pkg && ln -s lib/pkg .venv/link && echo warm > \"$HOME/.cache/tool/state\"",
        );
        let out = run(&p, &first).await;
        assert!(out.success, "{sandbox:?}: {out:?}");
        let m = p.manifest(&first);
        assert_eq!(m.caches.len(), 2, "{m:?}");
        assert_eq!(m.caches[0].restored.as_deref(), Some("miss"));
        assert_eq!(m.caches[0].saved.as_deref(), Some("saved"), "{m:?}");
        assert_eq!(m.caches[1].saved.as_deref(), Some("saved"), "{m:?}");
        let entry = entry_dir(&p, ".venv", "deps-1");
        assert_eq!(listing(&entry.join("tree")), ["lib/", "lib/pkg", "link@"]);
        let meta = fs::metadata(entry.join("entry.json")).unwrap();

        // The next run of the stage starts without them: restored from the entry.
        fs::remove_dir_all(p.worktree().join(".venv")).unwrap();
        fs::remove_dir_all(p.root().join(".orchestrator/homes/run-1/build/.cache")).unwrap();
        let second = job(
            &p,
            sandbox.clone(),
            entries.clone(),
            "cat .venv/lib/pkg && cat .venv/link && cat \"$HOME/.cache/tool/state\" && echo more > .venv/lib/extra && echo changed > .venv/lib/pkg",
        );
        let out = run(&p, &second).await;
        assert!(out.success, "{sandbox:?}: {out:?}");
        assert_eq!(p.stdout(&second), "pkg-1\npkg-1\nwarm\n");
        let m = p.manifest(&second);
        assert_eq!(m.caches[0].restored.as_deref(), Some("exact"), "{m:?}");
        assert_eq!(m.caches[0].saved.as_deref(), Some("skipped"), "{m:?}");
        // Never rewritten, and the step's writes stayed in its own copy.
        assert_eq!(listing(&entry.join("tree")), ["lib/", "lib/pkg", "link@"]);
        assert_eq!(
            fs::read_to_string(entry.join("tree/lib/pkg")).unwrap(),
            "pkg-1\n"
        );
        let again = fs::metadata(entry.join("entry.json")).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!((meta.ino(), meta.mtime()), (again.ino(), again.mtime()));
        assert!(tmp_is_empty(&p));
    }
}

#[tokio::test]
async fn a_cache_holding_links_is_saved_and_restored_with_them_as_links_never_their_targets() {
    for sandbox in backends() {
        let p = Project::new();
        // The orchestrator's data, where no step should reach.
        let data = p.outside();
        fs::write(data.join("admin.token"), "TOPSECRET").unwrap();
        let script = format!(
            "mkdir -p .venv && ln -s /etc/shadow .venv/shadow && ln -s {d} .venv/data && ln -s {d}/admin.token .venv/token && mkfifo .venv/fifo && echo ok > .venv/file",
            d = data.display()
        );
        let entries = vec![cache(".venv", "links-1", &[])];
        let first = job(&p, sandbox.clone(), entries.clone(), &script);
        let out = run(&p, &first).await;
        assert!(out.success, "{sandbox:?}: {out:?}");
        let tree = entry_dir(&p, ".venv", "links-1").join("tree");
        assert_eq!(
            listing(&tree),
            ["data@", "file", "shadow@", "token@"],
            "the FIFO is skipped"
        );
        assert_eq!(
            fs::read_link(tree.join("shadow")).unwrap(),
            Path::new("/etc/shadow")
        );
        assert_eq!(fs::read_link(tree.join("data")).unwrap(), data);
        let m = p.manifest(&first);
        assert_eq!(m.caches[0].bytes, 3, "only the regular file's bytes: {m:?}");

        fs::remove_dir_all(p.worktree().join(".venv")).unwrap();
        let second = job(
            &p,
            sandbox.clone(),
            entries,
            "test -L .venv/shadow && test -L .venv/data && test ! -e .venv/fifo && cat .venv/file",
        );
        let out = run(&p, &second).await;
        assert!(out.success, "{sandbox:?}: {out:?}");
        let wt = p.worktree().join(".venv");
        assert_eq!(
            fs::read_link(wt.join("token")).unwrap(),
            data.join("admin.token")
        );
        // Nothing was written where the links lead.
        assert_eq!(listing(&data), ["admin.token"]);
        assert_eq!(
            fs::read_to_string(data.join("admin.token")).unwrap(),
            "TOPSECRET"
        );
    }
}

#[tokio::test]
async fn a_link_planted_at_the_restore_path_is_replaced_never_written_through() {
    let p = Project::new();
    let entries = vec![cache(".venv", "plant-1", &[])];
    let sandbox = spec(SandboxKind::Namespace);
    let first = job(
        &p,
        sandbox.clone(),
        entries.clone(),
        "mkdir .venv && echo pkg > .venv/pkg",
    );
    assert!(run(&p, &first).await.success);
    // A step (or the repository) left .venv a link to a directory outside.
    let victim = p.outside();
    fs::write(victim.join("keep"), "mine").unwrap();
    fs::remove_dir_all(p.worktree().join(".venv")).unwrap();
    std::os::unix::fs::symlink(&victim, p.worktree().join(".venv")).unwrap();
    let second = job(&p, sandbox, entries, "test ! -L .venv && cat .venv/pkg");
    let out = run(&p, &second).await;
    assert!(out.success, "{out:?}");
    assert_eq!(p.stdout(&second), "pkg\n");
    assert_eq!(
        listing(&victim),
        ["keep"],
        "nothing written through the link"
    );
    assert_eq!(fs::read_to_string(victim.join("keep")).unwrap(), "mine");
}

#[tokio::test]
async fn a_link_on_the_way_to_the_cache_path_fails_the_step_and_writes_nothing() {
    let p = Project::new();
    let entries = vec![cache("deps/.venv", "way-1", &[])];
    let sandbox = spec(SandboxKind::Namespace);
    let first = job(
        &p,
        sandbox.clone(),
        entries.clone(),
        "mkdir -p deps/.venv && echo pkg > deps/.venv/pkg",
    );
    assert!(run(&p, &first).await.success);
    let victim = p.outside();
    fs::remove_dir_all(p.worktree().join("deps")).unwrap();
    std::os::unix::fs::symlink(&victim, p.worktree().join("deps")).unwrap();
    let second = job(&p, sandbox, entries, "echo ran");
    let out = run(&p, &second).await;
    assert!(!out.success);
    assert_eq!(out.error_class, Some(ErrorClass::Task));
    let error = out.error.unwrap_or_default();
    assert!(
        error.contains("cache[0]") && error.contains("symlink"),
        "{error}"
    );
    assert_eq!(p.stdout(&second), "", "no command ran");
    assert!(
        listing(&victim).is_empty(),
        "nothing written through the link"
    );
}

#[tokio::test]
async fn an_entry_over_the_agents_cap_is_not_saved_and_the_manifest_says_why() {
    let mut p = Project::new();
    p.cfg.cache_max = 1 << 20;
    let entries = vec![cache(".venv", "big-1", &[])];
    let j = job(
        &p,
        spec(SandboxKind::Namespace),
        entries,
        "mkdir .venv && head -c 600000 /dev/zero > .venv/a && head -c 600000 /dev/zero > .venv/b",
    );
    let out = run(&p, &j).await;
    assert!(
        out.success,
        "a cache that cannot be saved fails nothing: {out:?}"
    );
    let m = p.manifest(&j);
    assert_eq!(m.caches[0].saved.as_deref(), Some("not saved"), "{m:?}");
    let note = m.caches[0].note.clone().unwrap_or_default();
    assert!(
        note.contains("--cache-max") && note.contains("1048576"),
        "{note}"
    );
    assert!(!entry_dir(&p, ".venv", "big-1").exists());
    assert!(tmp_is_empty(&p));
}

#[tokio::test]
async fn a_failed_step_saves_nothing() {
    let p = Project::new();
    let j = job(
        &p,
        spec(SandboxKind::Namespace),
        vec![cache(".venv", "fail-1", &[])],
        "mkdir .venv && echo x > .venv/x && exit 3",
    );
    let out = run(&p, &j).await;
    assert!(!out.success);
    assert!(!entry_dir(&p, ".venv", "fail-1").exists());
    assert_eq!(p.manifest(&j).caches[0].saved, None);
}

#[tokio::test]
async fn a_home_cache_in_a_process_step_fails_naming_it() {
    let p = Project::new();
    let j = job(
        &p,
        spec(SandboxKind::Process),
        vec![cache("~/.cache/x", "k", &[])],
        "echo ran",
    );
    let out = run(&p, &j).await;
    assert!(!out.success);
    let error = out.error.unwrap_or_default();
    assert!(
        error.contains("cache[0]") && error.contains("process step"),
        "{error}"
    );
}

fn meta(path: &str, key: &str, at: i64) -> EntryMeta {
    EntryMeta {
        path: path.into(),
        key: key.into(),
        saved_at_ms: at,
        bytes: 0,
        files: 0,
        run_id: "r".into(),
        stage_id: "s".into(),
    }
}

fn source(files: usize, content: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..files {
        fs::write(dir.path().join(format!("f{i:04}")), content).unwrap();
    }
    dir
}

#[test]
fn restore_keys_fall_back_to_the_newest_entry_of_the_first_prefix_that_has_one() {
    let project = tempfile::tempdir().unwrap();
    let store = CacheStore::open(project.path(), true).unwrap().unwrap();
    let src = source(1, "x");
    let src = ConfinedDir::open(src.path(), Path::new(""), false).unwrap();
    let s = slot(".venv");
    for (key, at) in [("pip-old", 1), ("pip-new", 2), ("other-x", 3)] {
        assert!(matches!(
            store
                .save(&s, &src, meta(".venv", key, at), u64::MAX)
                .unwrap(),
            Saved::Saved(_)
        ));
    }
    let found = |key: &str, prefixes: &[&str]| {
        let prefixes: Vec<String> = prefixes.iter().map(|p| p.to_string()).collect();
        match store.find(&s, key, &prefixes).unwrap() {
            Found::Exact(m) => format!("exact {}", m.key),
            Found::Prefix(m) => format!("prefix {}", m.key),
            Found::Miss => "miss".into(),
        }
    };
    assert_eq!(found("pip-old", &["pip-"]), "exact pip-old");
    assert_eq!(found("pip-3", &["pip-"]), "prefix pip-new");
    assert_eq!(found("pip-3", &["nothing-", "other-"]), "prefix other-x");
    assert_eq!(found("pip-3", &["nothing-"]), "miss");
    assert_eq!(found("pip-3", &[]), "miss");
    // Another path's entries are another slot's.
    assert_eq!(
        store.find(&slot("~/.venv"), "pip-old", &[]).unwrap(),
        Found::Miss
    );
}

#[test]
fn two_saves_of_one_key_at_once_keep_one_whole_entry() {
    for _ in 0..5 {
        let project = tempfile::tempdir().unwrap();
        let (a, b) = (source(300, "from a\n"), source(300, "from b\n"));
        let results: Vec<Saved> = std::thread::scope(|scope| {
            [a.path(), b.path()]
                .map(|dir| {
                    let root = project.path().to_owned();
                    scope.spawn(move || {
                        let store = CacheStore::open(&root, true).unwrap().unwrap();
                        let src = ConfinedDir::open(dir, Path::new(""), false).unwrap();
                        store
                            .save("wt+.venv", &src, meta(".venv", "same", 1), u64::MAX)
                            .unwrap()
                    })
                })
                .map(|h| h.join().unwrap())
                .into()
        });
        let saved = results
            .iter()
            .filter(|r| matches!(r, Saved::Saved(_)))
            .count();
        assert_eq!(saved, 1, "{results:?}");
        let tree = project
            .path()
            .join(".orchestrator/caches/wt+.venv/same/tree");
        let names = listing(&tree);
        assert_eq!(names.len(), 300);
        let first = fs::read_to_string(tree.join("f0000")).unwrap();
        for n in &names {
            assert_eq!(
                fs::read_to_string(tree.join(n)).unwrap(),
                first,
                "one source, whole"
            );
        }
        assert!(listing(&project.path().join(".orchestrator/caches/.tmp")).is_empty());
    }
}

#[test]
fn removing_an_entry_takes_it_whole_and_a_device_in_a_tree_is_skipped() {
    let project = tempfile::tempdir().unwrap();
    let store = CacheStore::open(project.path(), true).unwrap().unwrap();
    let src = source(3, "x");
    let sock = std::os::unix::net::UnixListener::bind(src.path().join("sock")).unwrap();
    let dir = ConfinedDir::open(src.path(), Path::new(""), false).unwrap();
    let Saved::Saved(copied) = store
        .save("wt+d", &dir, meta("d", "k1", 1), u64::MAX)
        .unwrap()
    else {
        panic!("not saved")
    };
    drop(sock);
    assert_eq!((copied.files, copied.skipped), (3, 1));
    assert!(fs::symlink_metadata(src.path().join("sock"))
        .unwrap()
        .file_type()
        .is_socket());
    assert_eq!(store.list().unwrap().len(), 1);
    assert!(store.remove("wt+d", "k1").unwrap());
    assert!(!store.remove("wt+d", "k1").unwrap());
    assert!(store.list().unwrap().is_empty());
    assert!(listing(&project.path().join(".orchestrator/caches/.tmp")).is_empty());
}

#[test]
fn a_committed_orchestrator_link_never_carries_the_caches_elsewhere() {
    let project = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), project.path().join(".orchestrator")).unwrap();
    let err = CacheStore::open(project.path(), true).unwrap_err();
    assert!(err.to_string().contains("symlink"), "{err}");
    assert!(listing(elsewhere.path()).is_empty());
}
