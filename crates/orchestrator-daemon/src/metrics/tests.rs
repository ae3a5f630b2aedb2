use super::*;

/// Every kind of family with a sample or more, as a scrape would read them.
fn scraped() -> Scraped {
    let mut models = BTreeMap::new();
    models.insert(
        "smol\"2".to_owned(),
        Usage {
            requests: 2,
            prompt_tokens: 31,
            completion_tokens: 5,
            queue_wait_ms: 1500,
            ..Default::default()
        },
    );
    Scraped {
        counts: Counts {
            runs: vec![("running".into(), 2)],
            stages: vec![("queued".into(), 5)],
            jobs: vec![("leased".into(), 1)],
            agents: 1,
            transitions: 42,
            retries: vec![("infra".into(), 3)],
        },
        models,
        fabric: FabricView {
            waiting: vec![("smol\"2".into(), 1)],
            instances: vec![("smol\"2".into(), "daemon".into(), true)],
            starts: [("smol\"2".to_owned(), 4)].into(),
        },
        ..Scraped::default()
    }
}

fn metrics() -> Metrics {
    let m = Metrics::default();
    m.claim_granted(Duration::from_millis(2), Duration::from_millis(700));
    m.completed();
    m
}

#[test]
fn every_metric_is_described_and_typed_once() {
    let text = metrics().render(scraped(), Format::Text004);
    for line in [
        "orch_model_tokens_total{model=\"smol\\\"2\",direction=\"in\"} 31",
        "orch_model_queue_wait_seconds_total{model=\"smol\\\"2\"} 1.5",
        "orch_model_requests_waiting{model=\"smol\\\"2\"} 1",
        "orch_model_instances{model=\"smol\\\"2\",place=\"daemon\",serving=\"true\"} 1",
        "orch_model_starts_total{model=\"smol\\\"2\"} 4",
        "orch_runs{state=\"running\"} 2",
        "orch_agents 1",
        "orch_claims_granted_total 1",
        "orch_completions_total 1",
        "orch_claim_store_seconds_total 0.002",
        "orch_transitions_total 42",
        "orch_retries_total{class=\"infra\"} 3",
        "# TYPE orch_retries_total counter",
        // 2 ms: in the 2.5 ms bucket and every wider one, not the 1 ms one.
        "orch_claim_seconds_bucket{le=\"0.001\"} 0",
        "orch_claim_seconds_bucket{le=\"0.0025\"} 1",
        "orch_claim_seconds_bucket{le=\"+Inf\"} 1",
        "orch_claim_seconds_count 1",
        // 700 ms queued: in the 1 s bucket, not the 0.5 s one.
        "orch_dispatch_seconds_bucket{le=\"0.5\"} 0",
        "orch_dispatch_seconds_bucket{le=\"1\"} 1",
        "orch_dispatch_seconds_sum 0.7",
        "orch_dispatch_seconds_count 1",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap_or(""))
        .collect();
    let mut unique = names.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(names.len(), unique.len(), "a metric typed twice: {names:?}");
    for n in &names {
        assert!(text.contains(&format!("# HELP {n} ")), "{n} lacks HELP");
    }
    assert!(!text.contains("..\n"), "a help text ends twice: {text}");
    // Every sample belongs to a typed family.
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let name = l.split(['{', ' ']).next().unwrap_or("");
        assert!(
            names.iter().any(|n| name == *n
                || ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(*n))),
            "{l:?} has no family in\n{text}"
        );
    }
}

#[test]
fn openmetrics_has_the_same_samples_and_ends_with_eof() {
    let m = metrics();
    let om = m.render(scraped(), Format::OpenMetrics);
    let text = m.render(scraped(), Format::Text004);
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE orch_retries counter\n"), "{om}");
    let samples = |t: &str| {
        let mut v: Vec<String> = t
            .lines()
            .filter(|l| !l.starts_with('#'))
            // The formats write a float bucket bound differently (1.0, 1).
            .map(|l| l.replace(".0\"}", "\"}"))
            .collect();
        v.sort();
        v
    };
    assert_eq!(samples(&om), samples(&text));
}

#[test]
fn a_scraper_gets_openmetrics_only_when_it_asks() {
    assert_eq!(Format::accepted(None), Format::Text004);
    assert_eq!(
        Format::accepted(Some("text/plain;version=0.0.4;q=0.5,*/*;q=0.1")),
        Format::Text004
    );
    let prometheus =
        "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4";
    assert_eq!(Format::accepted(Some(prometheus)), Format::OpenMetrics);
    assert!(Format::Text004.content_type().contains("version=0.0.4"));
    assert!(Format::OpenMetrics
        .content_type()
        .starts_with("application/openmetrics-text"));
}

#[test]
fn without_models_no_model_family_is_shown() {
    let text = Metrics::default().render(Scraped::default(), Format::Text004);
    assert!(!text.contains("orch_model_"), "{text}");
    assert!(text.contains("# TYPE orch_agent_slots gauge"), "{text}");
}
