//! Reading what the processes under test logged, as JSON lines
//! (`OTAKO_LOG_JSON=1`), past the markers the harness writes itself.

use serde_json::Value;

/// Lines the harness itself writes into process logs.
pub fn is_harness_line(line: &str) -> bool {
    line.starts_with("===== e2e:")
}

/// Every line of a process log except the harness's own, parsed as JSON;
/// `Err` holds the first line that is not a JSON object.
pub fn json_lines(text: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        if is_harness_line(line) || line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(v) if v.is_object() => out.push(v),
            _ => return Err(line.to_owned()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_lines_skip_harness_markers_and_reject_plain_text() {
        let text = "===== e2e: starting gw-1 =====\n{\"level\":\"INFO\"}\n\n";
        let lines = super::json_lines(text).unwrap();
        assert_eq!(lines, vec![serde_json::json!({"level": "INFO"})]);
        assert_eq!(
            super::json_lines("{}\nplain text\n"),
            Err("plain text".to_owned())
        );
    }
}
