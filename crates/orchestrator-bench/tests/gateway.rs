//! The gateway bench: a real llama.cpp server, called directly and through a
//! real daemon's gateway, and the figures it prints.

use std::path::PathBuf;

use orchestrator_bench::gateway::{self, GatewayArgs};

/// The test model from the environment `scripts/test` sets up.
fn test_model() -> PathBuf {
    let var = |name: &str| match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: scripts/test installs the model runtime and sets it \
             (or run `scripts/model-assets.sh` and export the lines it prints)"
        ),
    };
    var("ORCH_LLAMA_PYTHON");
    PathBuf::from(var("ORCH_TEST_MODEL"))
}

fn args(model: Option<PathBuf>, requests: usize) -> GatewayArgs {
    GatewayArgs {
        model,
        requests,
        llama_launcher: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs llama.cpp and the test model: run scripts/test"
)]
async fn the_gateway_bench_prints_direct_and_gateway_percentiles_of_real_completions() {
    let o = args(Some(test_model()), 5).opts().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rows = gateway::run(&o, dir.path()).await.unwrap();
    let text = gateway::render(&rows);
    for variant in ["completion", "stream"] {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(variant))
            .unwrap_or_else(|| panic!("no {variant} row in {text}"));
        let f: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .map(|x| {
                x.parse()
                    .unwrap_or_else(|e| panic!("{x:?} in {line:?}: {e}\n{text}"))
            })
            .collect();
        let [requests, d50, d99, g50, g99, o50, o99] = f[..] else {
            panic!("expected 7 figures in {line:?}\n{text}");
        };
        assert_eq!(requests, 5.0, "{text}");
        for x in [d50, d99, g50, g99] {
            assert!(x > 0.0, "{line:?}\n{text}");
        }
        assert!(d99 >= d50 && g99 >= g50, "{line:?}\n{text}");
        // Printed to the microsecond: the overheads are the differences.
        assert!((o50 - (g50 - d50)).abs() < 0.0025, "{line:?}\n{text}");
        assert!((o99 - (g99 - d99)).abs() < 0.0025, "{line:?}\n{text}");
    }

    // `-o json`: every row names its workload and carries every sample.
    let rows = serde_json::to_value(&rows).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    for r in rows {
        assert_eq!(r["workload"], "gateway", "{r}");
        assert_eq!(r["samples_direct_ms"].as_array().unwrap().len(), 5, "{r}");
        assert_eq!(r["samples_gateway_ms"].as_array().unwrap().len(), 5, "{r}");
        for k in [
            "direct_p50_ms",
            "gateway_p50_ms",
            "direct_p99_ms",
            "gateway_p99_ms",
        ] {
            assert!(r[k].as_f64().unwrap() > 0.0, "{k}: {r}");
        }
    }
}

#[test]
fn the_gateway_bench_without_a_model_names_the_flag_and_the_variable() {
    let e = args(None, 5).opts().unwrap_err().to_string();
    assert!(e.contains("--model"), "{e}");
    assert!(e.contains("ORCH_TEST_MODEL"), "{e}");

    let e = args(Some("/no/such.gguf".into()), 5)
        .opts()
        .unwrap_err()
        .to_string();
    assert!(e.contains("/no/such.gguf"), "{e}");
}
