//! `orch bench --workloads gateway`: a real llama.cpp server, called
//! directly and through a real daemon's gateway, and the figures printed.

mod common;

use std::process::{Command, Stdio};

use common::*;

/// `orch bench ARGS` with the model runtime from the test's environment and
/// no other `ORCH_` variable.
fn bench(args: &[&str]) -> Out {
    let mut c = Command::new(orch_bin());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ORCH_") {
            c.env_remove(k);
        }
    }
    let launcher =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/llama-server.py");
    let dir = tempfile::tempdir().unwrap();
    let out = c
        .env(
            "ORCH_LLAMA_PYTHON",
            std::env::var("ORCH_LLAMA_PYTHON").unwrap_or_default(),
        )
        .env("TMPDIR", dir.path())
        .arg("bench")
        .args(["--gateway-model", &test_model()])
        .arg("--llama-launcher")
        .arg(&launcher)
        .args(args)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("cannot start orch");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn the_gateway_bench_prints_direct_and_gateway_percentiles_of_real_completions() {
    let out = bench(&["--workloads", "gateway", "--gateway-requests", "5"]);
    out.expect_code(0);
    for variant in ["completion", "stream"] {
        let line = out
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(variant))
            .unwrap_or_else(|| panic!("no {variant} row in {out}"));
        let f: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .map(|x| {
                x.parse()
                    .unwrap_or_else(|e| panic!("{x:?} in {line:?}: {e}\n{out}"))
            })
            .collect();
        let [requests, d50, d99, g50, g99, o50, o99] = f[..] else {
            panic!("expected 7 figures in {line:?}\n{out}");
        };
        assert_eq!(requests, 5.0, "{out}");
        for x in [d50, d99, g50, g99] {
            assert!(x > 0.0, "{line:?}\n{out}");
        }
        assert!(d99 >= d50 && g99 >= g50, "{line:?}\n{out}");
        // Printed to the microsecond: the overheads are the differences.
        assert!((o50 - (g50 - d50)).abs() < 0.0025, "{line:?}\n{out}");
        assert!((o99 - (g99 - d99)).abs() < 0.0025, "{line:?}\n{out}");
    }

    let out = bench(&[
        "--workloads",
        "gateway",
        "--gateway-requests",
        "3",
        "-o",
        "json",
    ]);
    out.expect_code(0);
    let rows = out.json();
    let rows = rows.as_array().unwrap_or_else(|| panic!("{out}"));
    assert_eq!(rows.len(), 2, "{out}");
    for r in rows {
        assert_eq!(r["workload"], "gateway", "{out}");
        assert_eq!(r["samples_direct_ms"].as_array().unwrap().len(), 3, "{out}");
        assert_eq!(
            r["samples_gateway_ms"].as_array().unwrap().len(),
            3,
            "{out}"
        );
        for k in [
            "direct_p50_ms",
            "gateway_p50_ms",
            "direct_p99_ms",
            "gateway_p99_ms",
        ] {
            assert!(r[k].as_f64().unwrap() > 0.0, "{k}: {out}");
        }
    }
}

#[test]
fn the_gateway_bench_without_a_model_names_the_flag_and_the_variable() {
    let h = Harness::new();
    let out = h.orch(&["bench", "--workloads", "gateway"]);
    out.expect_code(2);
    assert!(out.stderr.contains("--gateway-model"), "{out}");
    assert!(out.stderr.contains("ORCH_TEST_MODEL"), "{out}");
    assert!(out.stdout.is_empty(), "{out}");

    let out = h.orch(&[
        "bench",
        "--workloads",
        "gateway",
        "--gateway-model",
        "/no/such.gguf",
    ]);
    out.expect_code(2);
    assert!(out.stderr.contains("/no/such.gguf"), "{out}");
}
