//! Caches in the workflow: which paths and keys are accepted, what each
//! refusal names, and how keys are computed from the base commit's files.

use orchestrator_core::cache::{
    compute, resolve, slot, TreeFile, TreeKind, DIGEST_LEN, MAX_CACHES,
};
use orchestrator_core::{parse_workflow, SpecError, Workflow};

fn with_stage_cache(entries: &str) -> String {
    format!(
        "name: w\nstages:\n  - id: build\n    cache:\n{entries}    steps:\n      - commands:\n          - argv: [\"true\"]\n"
    )
}

fn entry(path: &str, key: &str) -> String {
    format!("      - path: {path:?}\n        key: {key:?}\n")
}

fn errors(text: &str) -> Vec<SpecError> {
    match parse_workflow(text, Some("wf.yaml")) {
        Ok(wf) => panic!("expected errors, got {wf:?}\n{text}"),
        Err(e) => e.0,
    }
}

fn the_error(text: &str) -> SpecError {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    errs.into_iter().next().unwrap()
}

fn parses(text: &str) -> Workflow {
    parse_workflow(text, Some("wf.yaml")).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[test]
fn worktree_and_home_paths_with_plain_keys_and_hash_files_are_accepted() {
    for (path, key) in [
        (".venv", "pip-${{ hashFiles('requirements.txt') }}"),
        (
            "node_modules",
            "npm-${{hashFiles(\"package-lock.json\", '**/*.lock')}}-v2",
        ),
        ("~/.cache/pip", "pip"),
        ("build/out.d", "B+1=2_x.y-z"),
        ("~/go/pkg/mod", "${{ hashFiles('go.sum') }}"),
    ] {
        let wf = parses(&with_stage_cache(&entry(path, key)));
        assert_eq!(wf.stages[0].cache[0].path, path);
    }
}

#[test]
fn bad_paths_are_refused_naming_the_field_and_line() {
    for (path, says) in [
        ("/etc", "is absolute"),
        ("/home/me/.cache", "is absolute"),
        ("~", "`~/`"),
        ("~root/x", "`~/`"),
        ("~/", "whole home"),
        ("../up", "`..`"),
        ("a/../../b", "`..`"),
        ("./x", "`.`"),
        (".git", "`.git`"),
        ("sub/.git/hooks", "`.git`"),
        (".orchestrator/caches", "orchestrator's directory"),
        (".orch/build", "orchestrator's directory"),
        ("a//b", "empty name"),
        ("a/", "empty name"),
        ("", "whole home"),
        ("with space", "letters, digits"),
        ("a+b", "letters, digits"),
        ("~/.gitconfig", "git identity"),
    ] {
        let err = the_error(&with_stage_cache(&entry(path, "k")));
        assert_eq!(err.field, "stages[0].cache[0].path", "{path:?}: {err}");
        assert!(err.message.contains(says), "{path:?}: {err}");
        assert_eq!(err.file.as_deref(), Some("wf.yaml"));
    }
    let err = the_error(&with_stage_cache(&entry("/etc", "k")));
    assert_eq!(err.line, Some(5), "{err}");
}

#[test]
fn bad_keys_are_refused_naming_the_field() {
    for (key, says) in [
        ("", "is empty"),
        ("has space", "' ' is not allowed"),
        ("a/b", "'/' is not allowed"),
        ("-dash-first", "letter or digit first"),
        (".hidden", "letter or digit first"),
        ("k-${{ hashFiles('a') ", "not closed"),
        ("k-${{ env.HOME }}", "not a function"),
        ("k-${{ hashFiles }}", "parentheses"),
        ("k-${{ hashFiles(a) }}", "not a quoted string"),
        ("k-${{ hashFiles('a' 'b') }}", "other than `,`"),
        ("k-${{ hashFiles('a) }}", "not closed"),
        ("k-${{ hashFiles('/etc/shadow') }}", "is absolute"),
        ("k-${{ hashFiles('../x') }}", "plain names"),
        ("k-${{ hashFiles('') }}", "is empty"),
        ("k-${{ hashFiles() }}", "not a quoted string"),
        ("ünïcode", "is not allowed"),
    ] {
        let err = the_error(&with_stage_cache(&entry(".venv", key)));
        assert_eq!(err.field, "stages[0].cache[0].key", "{key:?}: {err}");
        assert!(err.message.contains(says), "{key:?}: {err}");
    }
    let long = "k".repeat(201);
    let err = the_error(&with_stage_cache(&entry(".venv", &long)));
    assert!(err.message.contains("at most 200"), "{err}");
    // Each hashFiles counts as its digest's length.
    let many = format!("{}{}", "k".repeat(190), "${{ hashFiles('a') }}");
    let err = the_error(&with_stage_cache(&entry(".venv", &many)));
    assert!(err.message.contains("206 bytes"), "{err}");
}

#[test]
fn bad_restore_keys_name_their_index() {
    let text = with_stage_cache(
        "      - path: .venv\n        key: k\n        restore_keys: [ok-, \"bad key\"]\n",
    );
    let err = the_error(&text);
    assert_eq!(err.field, "stages[0].cache[0].restore_keys[1]", "{err}");
    let many: Vec<String> = (0..9).map(|i| format!("p{i}-")).collect();
    let text = with_stage_cache(&format!(
        "      - path: .venv\n        key: k\n        restore_keys: [{}]\n",
        many.join(", ")
    ));
    assert_eq!(the_error(&text).field, "stages[0].cache[0].restore_keys");
}

#[test]
fn too_many_entries_repeats_and_overlaps_are_refused() {
    let lots: String = (0..=MAX_CACHES)
        .map(|i| entry(&format!("d{i}"), "k"))
        .collect();
    let errs = errors(&with_stage_cache(&lots));
    assert!(
        errs.iter()
            .any(|e| e.field == "stages[0].cache" && e.message.contains("at most 8")),
        "{errs:#?}"
    );

    let err = the_error(&with_stage_cache(&format!(
        "{}{}",
        entry(".venv", "a"),
        entry(".venv", "b")
    )));
    assert_eq!(err.field, "stages[0].cache[1].path");
    assert!(err.message.contains("repeats"), "{err}");
    let err = the_error(&with_stage_cache(&format!(
        "{}{}",
        entry("deps", "a"),
        entry("deps/sub", "b")
    )));
    assert_eq!(err.field, "stages[0].cache[1].path");
    assert!(err.message.contains("overlaps"), "{err}");
    // Siblings with a common prefix are separate.
    parses(&with_stage_cache(&format!(
        "{}{}",
        entry("deps", "a"),
        entry("deps2", "b")
    )));
}

#[test]
fn the_workflows_entries_are_checked_and_count_with_each_stages() {
    let text = "name: w\ncache:\n  - path: /abs\n    key: k\nstages:\n  - id: a\n    steps:\n      - commands:\n          - argv: [\"true\"]\n";
    let err = the_error(text);
    assert_eq!(err.field, "cache[0].path", "{err}");
    assert_eq!(err.line, Some(3), "{err}");

    let shared: String = (0..5)
        .map(|i| format!("  - path: w{i}\n    key: k\n"))
        .collect();
    let own: String = (0..4).map(|i| entry(&format!("s{i}"), "k")).collect();
    let text = format!(
        "name: w\ncache:\n{shared}stages:\n  - id: build\n    cache:\n{own}    steps:\n      - commands:\n          - argv: [\"true\"]\n"
    );
    let err = the_error(&text);
    assert_eq!(err.field, "stages[0].cache", "{err}");
    assert!(err.message.contains("9 cache entries"), "{err}");

    // A stage's entry for the workflow's path replaces it; one inside it is refused.
    let text = "name: w\ncache:\n  - path: deps\n    key: k\nstages:\n  - id: a\n    cache:\n      - path: deps\n        key: mine\n    steps:\n      - commands:\n          - argv: [\"true\"]\n";
    parses(text);
    let text = text.replace("      - path: deps\n", "      - path: deps/inner\n");
    let err = the_error(&text);
    assert_eq!(err.field, "stages[0].cache[0].path", "{err}");
}

#[test]
fn a_home_cache_in_a_process_stage_is_refused() {
    let text = "name: w\nstages:\n  - id: a\n    sandbox: process\n    cache:\n      - path: ~/.cache/pip\n        key: k\n    steps:\n      - commands:\n          - argv: [\"true\"]\n";
    let err = the_error(text);
    assert_eq!(err.field, "stages[0].cache", "{err}");
    assert!(err.message.contains("sandbox: process"), "{err}");
    parses(&text.replace("~/.cache/pip", ".venv"));
}

fn file(path: &str, id: &str) -> TreeFile {
    TreeFile {
        path: path.into(),
        id: id.into(),
        kind: TreeKind::File,
    }
}

#[test]
fn a_key_changes_with_the_files_content_and_nothing_else() {
    let tree = vec![file("requirements.txt", "aaa"), file("src/main.py", "bbb")];
    let key = compute("pip-${{ hashFiles('requirements.txt') }}", &tree).unwrap();
    assert!(key.starts_with("pip-"));
    assert_eq!(key.len(), 4 + DIGEST_LEN);
    assert_eq!(
        compute("pip-${{ hashFiles('requirements.txt') }}", &tree).unwrap(),
        key
    );
    // Another file's change leaves it; the file's own changes it.
    let other = vec![file("requirements.txt", "aaa"), file("src/main.py", "ccc")];
    assert_eq!(
        compute("pip-${{ hashFiles('requirements.txt') }}", &other).unwrap(),
        key
    );
    let changed = vec![file("requirements.txt", "ddd"), file("src/main.py", "bbb")];
    assert_ne!(
        compute("pip-${{ hashFiles('requirements.txt') }}", &changed).unwrap(),
        key
    );
    // The order of the tree does not matter; patterns matching one file twice count it once.
    let both = "${{ hashFiles('**/*.txt', 'requirements.txt', 'src/*') }}";
    let reversed: Vec<TreeFile> = tree.iter().rev().cloned().collect();
    assert_eq!(
        compute(both, &tree).unwrap(),
        compute(both, &reversed).unwrap()
    );
    assert_eq!(compute("plain-key", &[]).unwrap(), "plain-key");
}

#[test]
fn a_key_that_cannot_be_computed_says_why() {
    let tree = vec![
        file("requirements.txt", "aaa"),
        TreeFile {
            path: "link.txt".into(),
            id: "x".into(),
            kind: TreeKind::Symlink,
        },
    ];
    let err = compute("k-${{ hashFiles('missing.lock') }}", &tree)
        .unwrap_err()
        .to_string();
    assert!(err.contains("matches no file"), "{err}");
    let err = compute("k-${{ hashFiles('*.txt') }}", &tree)
        .unwrap_err()
        .to_string();
    assert!(err.contains("a symlink"), "{err}");
}

#[test]
fn resolve_computes_every_key_and_moves_the_workflows_entries_into_each_stage() {
    let text = "name: w\ncache:\n  - path: ~/.cache/pip\n    key: pip-${{ hashFiles('requirements.txt') }}\n    restore_keys: [pip-]\n  - path: deps\n    key: shared\nstages:\n  - id: a\n    steps:\n      - commands:\n          - argv: [\"true\"]\n  - id: b\n    cache:\n      - path: deps\n        key: own-${{ hashFiles('b.lock') }}\n    steps:\n      - commands:\n          - argv: [\"true\"]\n";
    let mut wf = parses(text);
    let tree = vec![file("requirements.txt", "r1"), file("b.lock", "b1")];
    resolve(&mut wf, &tree, Some("wf.yaml")).unwrap();
    assert!(wf.cache.is_empty());
    let a = &wf.stages[0].cache;
    assert_eq!(a.len(), 2);
    assert!(
        a[0].key.starts_with("pip-") && !a[0].key.contains("${{"),
        "{a:?}"
    );
    assert_eq!(a[0].restore_keys, ["pip-"]);
    assert_eq!(a[1].key, "shared");
    let b = &wf.stages[1].cache;
    assert_eq!(b.len(), 2, "{b:?}");
    assert_eq!(b[0].path, "~/.cache/pip");
    assert_eq!(b[1].path, "deps");
    assert!(b[1].key.starts_with("own-") && b[1].key.len() == 4 + DIGEST_LEN);

    let mut wf = parses(text);
    let err = resolve(&mut wf, &[file("requirements.txt", "r1")], Some("wf.yaml")).unwrap_err();
    assert_eq!(err.0.len(), 1, "{err}");
    assert_eq!(err.0[0].field, "stages[1].cache[0].key");
    assert!(err.0[0].message.contains("b.lock"), "{err}");
    assert_eq!(err.0[0].file.as_deref(), Some("wf.yaml"));
}

#[test]
fn slots_keep_distinct_paths_apart() {
    assert_eq!(slot(".venv"), "wt+.venv");
    assert_eq!(slot("a/b"), "wt+a+b");
    assert_eq!(slot("~/.cache/pip"), "home+.cache+pip");
    assert_ne!(slot("~/x"), slot("home/x"));
}
