//! Plain HTTP reads of the endpoints a load balancer or an operator uses:
//! admin pages, health checks, JSON answers.

use serde_json::Value;
use std::time::Duration;

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client")
}

/// The status of `GET url`, or `None` when nothing answers.
pub async fn http_status(url: &str) -> Option<u16> {
    http()
        .get(url)
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// `GET url` as text; panics unless 200.
pub async fn http_text(url: &str) -> String {
    let resp = http()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp
        .text()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: reading the body: {e}"));
    assert_eq!(status, 200, "GET {url}: {text}");
    text
}

/// `GET url` as JSON, with its status.
pub async fn http_json(url: &str) -> (u16, Value) {
    let resp = http()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let bytes = resp
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: reading the body: {e}"));
    let v = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "GET {url}: not JSON ({e}): {:?}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, v)
}
