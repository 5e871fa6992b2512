//! The chat page (`clients/web`): a small app built on the TypeScript SDK
//! (`clients/js`, its compiled module committed as `clients/web/sdk/otako.js`),
//! compiled into the binary so the backend serves it without files or npm at
//! run time. Same origin as the API, so the page needs no CORS.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const INDEX_HTML: &str = include_str!("../../clients/web/index.html");
const APP_JS: &str = include_str!("../../clients/web/app.js");
const STYLE_CSS: &str = include_str!("../../clients/web/style.css");
const SDK_JS: &str = include_str!("../../clients/web/sdk/otako.js");

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JSON: &str = "application/json";

/// `/`, its scripts and style, and `/config.json`: the gateway URLs the page
/// connects to (`OTAKO_PUBLIC_GATEWAY_URLS`).
pub fn router(gateway_urls: &[String]) -> Router {
    let config = serde_json::json!({ "gateways": gateway_urls }).to_string();
    Router::new()
        .route("/", get(|| file(HTML, INDEX_HTML)))
        .route("/app.js", get(|| file(JS, APP_JS)))
        .route("/style.css", get(|| file(CSS, STYLE_CSS)))
        .route("/sdk/otako.js", get(|| file(JS, SDK_JS)))
        .route(
            "/config.json",
            get(move || {
                let config = config.clone();
                async move { ([(header::CONTENT_TYPE, JSON)], config) }
            }),
        )
}

async fn file(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // A new build serves new files: always ask again.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}
