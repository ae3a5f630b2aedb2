//! What a stage needs: its labels and resources read into placement needs,
//! and the sizes of memory a workflow writes.

mod common;

use orchestrator_core::sched::Needs;
use orchestrator_core::spec::{Resources, SizeSpec, Stage};

use common::{needs, shared, strings, whole};

const G: u64 = 1024;

// ------------------------------------------------------------ what a stage needs

fn stage(labels: &[&str], resources: Option<Resources>) -> Stage {
    Stage {
        id: "s".into(),
        labels: strings(labels),
        resources,
        ..Stage::default()
    }
}

fn res(memory: Option<u64>, gpus: Option<u32>, gpu_memory: Option<u64>) -> Option<Resources> {
    Some(Resources {
        memory: memory.map(SizeSpec::from_mib),
        gpus,
        gpu_memory: gpu_memory.map(SizeSpec::from_mib),
    })
}

#[test]
fn a_stage_needs_what_its_resources_say() {
    let table: &[(Option<Resources>, Needs)] = &[
        (None, Needs::default()),
        (res(None, None, None), Needs::default()),
        (res(Some(4 * G), None, None), needs(4 * G, 0, None)),
        // GPU memory alone means one GPU, shared.
        (res(None, None, Some(8 * G)), shared(8 * G)),
        (res(None, Some(2), Some(8 * G)), needs(0, 2, Some(8 * G))),
        // GPUs without memory are taken whole.
        (res(None, Some(2), None), whole(2)),
        // No GPUs: GPU memory means nothing (validation refuses it).
        (res(None, Some(0), Some(8 * G)), Needs::default()),
    ];
    for (r, expected) in table {
        assert_eq!(&Needs::of_stage(&stage(&[], r.clone())), expected, "{r:?}");
    }
}

#[test]
fn a_stage_needs_its_labels_sorted_once_each_and_equal_needs_have_equal_keys() {
    let a = Needs::of_stage(&stage(&["b", "a", "b"], res(Some(G), None, Some(G))));
    assert_eq!(a.labels, ["a", "b"]);
    let b = Needs::of_stage(&stage(&["a", "b"], res(Some(G), Some(1), Some(G))));
    assert_eq!(a, b);
    assert_eq!(a.key(), b.key());
    let whole_gpu = Needs::of_stage(&stage(&["a", "b"], res(Some(G), Some(1), None)));
    assert_ne!(a.key(), whole_gpu.key());
    assert_ne!(a.key(), Needs::default().key());
    assert_eq!(Needs::default().key(), "{}");
    assert_eq!(
        a.to_string(),
        "1 slot, 1 GiB memory, 1 GPU with 1 GiB free, labels [a, b]"
    );
    assert_eq!(whole(2).to_string(), "1 slot, 2 whole GPUs");
    // The key reads back as the same needs.
    assert_eq!(serde_json::from_str::<Needs>(&a.key()).unwrap(), a);
}

// ------------------------------------------------------------ sizes

#[test]
fn sizes_refuse_what_is_not_a_number_with_a_binary_unit() {
    for (text, says) in [
        ("", "expected a number with a unit"),
        ("G", "expected a number with a unit"),
        ("-1G", "expected a number with a unit"),
        ("4X", "unknown unit \"X\""),
        ("1.5G", "unknown unit \".5G\""),
        ("4 bananas", "unknown unit"),
        ("4gib", "unknown unit"),
        ("4KB", "unknown unit"),
        // A suffix alone would read bytes as MiB.
        ("512B", "unknown unit \"B\""),
        ("512iB", "unknown unit \"iB\""),
        ("99999999999999999999", "expected a number"),
        ("99999999999999999T", "too large"),
    ] {
        let err = SizeSpec::parse(text).expect_err(text).to_string();
        assert!(err.contains(&format!("{text:?}")), "{err}");
        assert!(err.contains(says), "{text}: {err}");
    }
    for (text, mib) in [
        ("4 G", 4 * G),
        ("4MiB", 4),
        ("4mB", 4),
        ("4t", G * G * 4),
        (" 16GiB ", 16 * G),
        ("0", 0),
    ] {
        assert_eq!(SizeSpec::parse(text), Ok(SizeSpec::from_mib(mib)), "{text}");
    }
}

#[test]
fn sizes_read_from_yaml_as_numbers_of_mib_or_strings() {
    let read = |t: &str| serde_yaml_ng::from_str::<SizeSpec>(t).map_err(|e| e.to_string());
    assert_eq!(read("2048"), Ok(SizeSpec::from_mib(2048)));
    assert_eq!(read("4G"), Ok(SizeSpec::from_mib(4 * G)));
    assert!(read("-1").unwrap_err().contains("must not be negative"));
    assert!(read("4 bananas").unwrap_err().contains("unknown unit"));
}
