//! The fabric's lines in `/metrics`: requests waiting per model, the
//! servers running where, and how often each model was started (a model
//! that reloads often is short of memory or `switch` time).

use super::control::Fabric;

/// Appends the fabric's metrics in Prometheus text.
pub fn render(fabric: &Fabric, out: &mut String) {
    let waiting = fabric.pool.waiting_all();
    if waiting.is_empty() {
        return;
    }
    out.push_str("# HELP orch_model_requests_waiting Gateway requests waiting for a slot of their model.\n# TYPE orch_model_requests_waiting gauge\n");
    for (model, n) in &waiting {
        out.push_str(&format!(
            "orch_model_requests_waiting{{model=\"{model}\"}} {n}\n"
        ));
    }
    out.push_str("# HELP orch_model_instances Model servers by place; serving=\"false\" while one starts, drains or stops.\n# TYPE orch_model_instances gauge\n");
    for (model, place, serving) in fabric.pool.instances() {
        out.push_str(&format!(
            "orch_model_instances{{model=\"{model}\",place=\"{place}\",serving=\"{serving}\"}} 1\n"
        ));
    }
    out.push_str("# HELP orch_model_starts_total Model servers started and ready, by model.\n# TYPE orch_model_starts_total counter\n");
    let starts = fabric.starts();
    for (model, _) in &waiting {
        let n = starts.get(model).copied().unwrap_or(0);
        out.push_str(&format!(
            "orch_model_starts_total{{model=\"{model}\"}} {n}\n"
        ));
    }
}
