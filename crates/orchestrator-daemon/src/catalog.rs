//! The workflow catalog: the definitions of each watched project, read from
//! its `.orchestrator/workflows/*.yaml|*.yml|*.json` and kept current by the
//! watcher ([`crate::watch`]). A run submitted by name starts with the
//! catalog's text of that name at that moment; the store records that text
//! and its sha256, so the run keeps the definition it started with whatever
//! happens to the file afterwards.
//!
//! The reload rules, one file at a time ([`Catalog::reload`]):
//! - a valid text replaces the file's definition;
//! - an invalid one (it does not parse or validate, its stages' `needs`
//!   form a cycle, or its `name:` is already another file's) keeps the old
//!   definition and records why;
//! - a deleted file takes its definition away;
//! - the same text again changes nothing.
//!
//! A workflow's name is its `name:`; a file that never held a valid
//! definition is listed under its stem, with its error.
//!
//! This part does no I/O: the watcher reads files and hands their text here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use orchestrator_core::api::WorkflowView;
use orchestrator_core::SpecErrors;
use orchestrator_host::confined::DefinitionError;
use sha2::{Digest, Sha256};

/// Where a project keeps its workflows, under its directory.
pub const WORKFLOWS_DIR: &str = ".orchestrator/workflows";

/// Whether `path` names a workflow file: `*.yaml`, `*.yml` or `*.json`, not
/// hidden (editors' swap and backup files are).
pub fn is_workflow_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.')
        && matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        )
}

/// A definition runs can start with.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    pub name: String,
    pub file: PathBuf,
    pub text: String,
    /// sha256 of `text`, hex: the `spec_hash` a run started with it records.
    pub hash: String,
    pub loaded_at_ms: i64,
    /// The inputs it declares.
    pub inputs: BTreeMap<String, orchestrator_core::spec::WorkflowInput>,
}

/// One workflow file of a project.
#[derive(Debug, Clone, Default)]
struct FileState {
    /// The hash of the text read last, valid or not: the same text again is
    /// no change.
    seen: Option<String>,
    /// The last valid definition.
    def: Option<Definition>,
    /// Why the last reload failed; None when it succeeded.
    error: Option<String>,
}

/// What one reload did, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// A new or changed definition now answers to `name`.
    Loaded {
        name: String,
        hash: String,
        /// The name the file's previous definition had, when it had one.
        previous: Option<String>,
    },
    /// The text is the one already seen: nothing changed.
    Unchanged,
    /// The text is not a valid definition; `kept` names the definition kept.
    Invalid { kept: Option<String>, error: String },
    /// The file is gone, and with it the definition `name`.
    Removed { name: Option<String> },
}

/// Why a name does not resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("project {project} is not watched by this daemon; its workflows can be run by file (`orch run FILE`), or by name once the daemon watches it (`orch up --project {project}`)")]
    NotWatched { project: String },
    #[error("workflow {name:?} is not in the catalog of project {project}; {known}")]
    Unknown {
        name: String,
        project: String,
        known: String,
    },
}

/// Every watched project's workflows.
#[derive(Debug, Default)]
pub struct Catalog {
    projects: BTreeMap<PathBuf, BTreeMap<PathBuf, FileState>>,
}

/// sha256 of `text`, hex.
pub fn hash(text: &str) -> String {
    format!("{:x}", Sha256::digest(text.as_bytes()))
}

/// Why a workflow file of a project gives no definition.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{}: cannot read: {source}", .file.display())]
    Unreadable {
        file: PathBuf,
        #[source]
        source: DefinitionError,
    },
    /// Not a valid workflow: every problem, each naming the file.
    #[error(transparent)]
    Invalid(#[from] SpecErrors),
    #[error("{}: the needs of these stages form a cycle: {}", .file.display(), .cycle.join(" -> "))]
    Cycle { file: PathBuf, cycle: Vec<String> },
    /// Its name is taken by `other`, loaded first.
    #[error("{}: name: workflow {name:?} is already defined by {}; expected a name no other workflow file of the project uses", .file.display(), .other.display())]
    NameTaken {
        file: PathBuf,
        name: String,
        other: PathBuf,
    },
}

/// Checks `text` as a workflow: parsed, validated, and planned (no cycle).
fn check(text: &str, file: &Path) -> Result<orchestrator_core::Workflow, FileError> {
    let wf = orchestrator_core::parse_workflow(text, Some(&file.display().to_string()))?;
    orchestrator_core::plan(&wf).map_err(|cycle| FileError::Cycle {
        file: file.to_owned(),
        cycle,
    })?;
    Ok(wf)
}

impl Catalog {
    /// Starts watching `project` (no files yet).
    pub fn add_project(&mut self, project: &Path) {
        self.projects.entry(project.to_path_buf()).or_default();
    }

    pub fn projects(&self) -> Vec<PathBuf> {
        self.projects.keys().cloned().collect()
    }

    /// The files of `project` the catalog knows, valid or not.
    pub fn files(&self, project: &Path) -> Vec<PathBuf> {
        self.projects
            .get(project)
            .map(|f| f.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Applies what was read from `file` of `project`: its text, None when
    /// it is gone, or why it could not be read.
    pub fn reload(
        &mut self,
        project: &Path,
        file: &Path,
        read: Result<Option<String>, DefinitionError>,
        now_ms: i64,
    ) -> Reload {
        let files = self.projects.entry(project.to_path_buf()).or_default();
        let text = match read {
            Ok(Some(text)) => text,
            Ok(None) => {
                return match files.remove(file) {
                    Some(st) => Reload::Removed {
                        name: st.def.map(|d| d.name),
                    },
                    None => Reload::Unchanged,
                }
            }
            Err(source) => {
                let st = files.entry(file.to_path_buf()).or_default();
                st.seen = None;
                let e = FileError::Unreadable {
                    file: file.to_owned(),
                    source,
                };
                st.error = Some(e.to_string());
                return Reload::Invalid {
                    kept: st.def.as_ref().map(|d| d.name.clone()),
                    error: st.error.clone().unwrap_or_default(),
                };
            }
        };
        let h = hash(&text);
        if files.get(file).and_then(|s| s.seen.as_deref()) == Some(h.as_str()) {
            return Reload::Unchanged;
        }
        let checked = check(&text, file).and_then(|wf| {
            // A name answers to one file: the one that took it first.
            match files
                .iter()
                .find(|(f, s)| *f != file && s.def.as_ref().is_some_and(|d| d.name == wf.name))
            {
                Some((other, _)) => Err(FileError::NameTaken {
                    file: file.to_owned(),
                    name: wf.name,
                    other: other.clone(),
                }),
                None => Ok(wf),
            }
        });
        let st = files.entry(file.to_path_buf()).or_default();
        st.seen = Some(h.clone());
        match checked {
            Ok(wf) => {
                st.error = None;
                let previous = st.def.take().map(|d| d.name);
                st.def = Some(Definition {
                    name: wf.name.clone(),
                    file: file.to_path_buf(),
                    text,
                    hash: h.clone(),
                    loaded_at_ms: now_ms,
                    inputs: wf.inputs.clone(),
                });
                Reload::Loaded {
                    name: wf.name,
                    hash: h,
                    previous,
                }
            }
            Err(e) => {
                let error = e.to_string();
                st.error = Some(error.clone());
                Reload::Invalid {
                    kept: st.def.as_ref().map(|d| d.name.clone()),
                    error,
                }
            }
        }
    }

    /// The definition `name` of `project`.
    pub fn resolve(&self, project: &Path, name: &str) -> Result<Definition, ResolveError> {
        let files = self
            .projects
            .get(project)
            .ok_or_else(|| ResolveError::NotWatched {
                project: project.display().to_string(),
            })?;
        if let Some(d) = files
            .values()
            .filter_map(|s| s.def.as_ref())
            .find(|d| d.name == name)
        {
            return Ok(d.clone());
        }
        let names: Vec<&str> = files
            .values()
            .filter_map(|s| s.def.as_ref().map(|d| d.name.as_str()))
            .collect();
        let broken: Vec<String> = files
            .iter()
            .filter(|(_, s)| s.def.is_none())
            .map(|(f, _)| f.display().to_string())
            .collect();
        let mut known = if names.is_empty() {
            format!(
                "it has none (files *.yaml, *.yml or *.json in {})",
                project.join(WORKFLOWS_DIR).display()
            )
        } else {
            format!("expected one of: {}", names.join(", "))
        };
        if !broken.is_empty() {
            known.push_str(&format!(
                "; not loaded, being invalid: {} (`orch workflows` says why)",
                broken.join(", ")
            ));
        }
        Err(ResolveError::Unknown {
            name: name.to_owned(),
            project: project.display().to_string(),
            known,
        })
    }

    /// Every file of every project, by project then file.
    pub fn list(&self) -> Vec<WorkflowView> {
        let mut out = Vec::new();
        for (project, files) in &self.projects {
            for (file, st) in files {
                let stem = file
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                out.push(WorkflowView {
                    project_dir: project.display().to_string(),
                    name: st.def.as_ref().map_or(stem, |d| d.name.clone()),
                    file: file.display().to_string(),
                    hash: st.def.as_ref().map(|d| d.hash.clone()),
                    loaded_at_ms: st.def.as_ref().map(|d| d.loaded_at_ms),
                    inputs: st
                        .def
                        .as_ref()
                        .map(|d| d.inputs.clone())
                        .unwrap_or_default(),
                    error: st.error.clone(),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wf(name: &str, echo: &str) -> String {
        format!("name: {name}\nstages:\n  - id: a\n    steps:\n      - commands:\n          - argv: [echo, {echo}]\n")
    }

    const P: &str = "/p";

    fn file(n: &str) -> PathBuf {
        Path::new(P).join(WORKFLOWS_DIR).join(n)
    }

    fn loaded(c: &mut Catalog, f: &str, text: &str) -> Reload {
        c.reload(Path::new(P), &file(f), Ok(Some(text.to_owned())), 1)
    }

    #[test]
    fn valid_text_loads_and_replaces() {
        let mut c = Catalog::default();
        let r = loaded(&mut c, "hello.yaml", &wf("hello", "one"));
        assert!(matches!(r, Reload::Loaded { ref name, previous: None, .. } if name == "hello"));
        let first = c.resolve(Path::new(P), "hello").unwrap();
        assert_eq!(first.hash, hash(&wf("hello", "one")));
        let r = c.reload(
            Path::new(P),
            &file("hello.yaml"),
            Ok(Some(wf("hello", "two"))),
            2,
        );
        assert!(matches!(r, Reload::Loaded { previous: Some(ref p), .. } if p == "hello"));
        let second = c.resolve(Path::new(P), "hello").unwrap();
        assert_eq!(second.text, wf("hello", "two"));
        assert_eq!(second.loaded_at_ms, 2);
        assert_ne!(first.hash, second.hash);
        assert_eq!(c.list().len(), 1);
        assert_eq!(c.list()[0].error, None);
    }

    #[test]
    fn same_text_is_no_change() {
        let mut c = Catalog::default();
        loaded(&mut c, "hello.yaml", &wf("hello", "one"));
        assert_eq!(
            loaded(&mut c, "hello.yaml", &wf("hello", "one")),
            Reload::Unchanged
        );
    }

    #[test]
    fn invalid_text_keeps_the_old_definition_and_says_why() {
        let mut c = Catalog::default();
        loaded(&mut c, "hello.yaml", &wf("hello", "one"));
        let bad = "name: hello\nstages:\n  - id: a\n    stepz: []\n";
        let r = loaded(&mut c, "hello.yaml", bad);
        let Reload::Invalid { kept, error } = r else {
            panic!("expected invalid, got {r:?}")
        };
        assert_eq!(kept.as_deref(), Some("hello"));
        assert!(error.contains("hello.yaml"), "{error}");
        let d = c.resolve(Path::new(P), "hello").unwrap();
        assert_eq!(d.text, wf("hello", "one"));
        let v = &c.list()[0];
        assert_eq!(v.hash.as_deref(), Some(hash(&wf("hello", "one")).as_str()));
        assert_eq!(v.error.as_deref(), Some(error.as_str()));
        // Fixed again: the error goes, the new text answers.
        loaded(&mut c, "hello.yaml", &wf("hello", "three"));
        assert_eq!(c.list()[0].error, None);
        assert_eq!(
            c.resolve(Path::new(P), "hello").unwrap().text,
            wf("hello", "three")
        );
    }

    #[test]
    fn a_cycle_is_invalid() {
        let mut c = Catalog::default();
        let cyc = "name: c\nstages:\n  - id: a\n    needs: [b]\n    steps:\n      - commands:\n          - argv: [\"true\"]\n  - id: b\n    needs: [a]\n    steps:\n      - commands:\n          - argv: [\"true\"]\n";
        let r = loaded(&mut c, "c.yaml", cyc);
        assert!(
            matches!(r, Reload::Invalid { kept: None, ref error } if error.contains("cycle")),
            "{r:?}"
        );
        // Never valid: listed under its stem, with no hash, not resolvable.
        let v = &c.list()[0];
        assert_eq!((v.name.as_str(), v.hash.as_ref()), ("c", None));
        let e = c.resolve(Path::new(P), "c").unwrap_err().to_string();
        assert!(e.contains("c.yaml"), "{e}");
    }

    #[test]
    fn a_deleted_file_removes_its_definition() {
        let mut c = Catalog::default();
        loaded(&mut c, "hello.yaml", &wf("hello", "one"));
        loaded(&mut c, "other.yml", &wf("other", "x"));
        let r = c.reload(Path::new(P), &file("hello.yaml"), Ok(None), 3);
        assert_eq!(
            r,
            Reload::Removed {
                name: Some("hello".into())
            }
        );
        let e = c.resolve(Path::new(P), "hello").unwrap_err().to_string();
        assert!(e.contains("expected one of: other"), "{e}");
        assert_eq!(c.list().len(), 1);
        assert_eq!(
            c.reload(Path::new(P), &file("hello.yaml"), Ok(None), 4),
            Reload::Unchanged
        );
    }

    #[test]
    fn a_name_answers_to_one_file() {
        let mut c = Catalog::default();
        loaded(&mut c, "a.yaml", &wf("same", "a"));
        let r = loaded(&mut c, "b.yaml", &wf("same", "b"));
        assert!(
            matches!(r, Reload::Invalid { kept: None, ref error } if error.contains("a.yaml")),
            "{r:?}"
        );
        assert_eq!(
            c.resolve(Path::new(P), "same").unwrap().text,
            wf("same", "a")
        );
        // The first file renames its workflow: the name is free again, and
        // the second file takes it when it changes.
        loaded(&mut c, "a.yaml", &wf("renamed", "a"));
        loaded(&mut c, "b.yaml", &wf("same", "b2"));
        assert_eq!(
            c.resolve(Path::new(P), "same").unwrap().text,
            wf("same", "b2")
        );
        assert!(c.resolve(Path::new(P), "renamed").is_ok());
    }

    #[test]
    fn unreadable_file_keeps_the_old_definition() {
        let mut c = Catalog::default();
        loaded(&mut c, "hello.yaml", &wf("hello", "one"));
        let r = c.reload(
            Path::new(P),
            &file("hello.yaml"),
            Err(DefinitionError::Io {
                path: file("hello.yaml"),
                source: std::io::ErrorKind::PermissionDenied.into(),
            }),
            2,
        );
        assert!(matches!(r, Reload::Invalid { kept: Some(_), .. }));
        assert!(c.resolve(Path::new(P), "hello").is_ok());
        // The same good text read again after the failure loads again.
        assert!(matches!(
            loaded(&mut c, "hello.yaml", &wf("hello", "one")),
            Reload::Loaded { .. }
        ));
        assert_eq!(c.list()[0].error, None);
    }

    #[test]
    fn unwatched_project_says_so() {
        let c = Catalog::default();
        let e = c.resolve(Path::new("/q"), "x").unwrap_err();
        assert!(matches!(e, ResolveError::NotWatched { .. }));
    }

    #[test]
    fn workflow_files_by_name() {
        for (n, ok) in [
            ("a.yaml", true),
            ("a.yml", true),
            ("a.json", true),
            (".a.yaml", false),
            ("a.yaml.swp", false),
            ("a.yaml~", false),
            ("a.txt", false),
            ("4913", false),
        ] {
            assert_eq!(is_workflow_file(Path::new(n)), ok, "{n}");
        }
    }
}
