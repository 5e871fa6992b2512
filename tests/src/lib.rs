//! The end-to-end harness: real nats-server, PostgreSQL, gateway and backend
//! processes, started per test, and clients that speak the contract: the
//! HTTP API, the client WebSocket and the dispatch subject.
//!
//! Each test gets its own NATS (single server or cluster) and its own database
//! on one PostgreSQL server shared by all test processes, so tests run in
//! parallel without seeing each other. Logs go to
//! `target/otako-e2e/logs/<test binary>/<test>/<process>.log`; when a test
//! fails, the tail of each log is printed.
//!
//! One module per concept: the processes (`stack`, `nats`, `db`, `process`,
//! `proxy`), the clients (`api`, `ws`, `reader`, `stalled`, `dispatch`) and
//! what tests read back or judge (`drill`, `metrics`, `http`, `services`, `logs`, `otlp`,
//! `traceparent`).
//!
//! Run with `cargo build --workspace --bins && cargo test -p otako-e2e`.

pub mod api;
pub mod chaos;
pub mod creds;
pub mod db;
pub mod dispatch;
pub mod drill;
pub mod env;
pub mod http;
pub mod logs;
pub mod metrics;
pub mod nats;
pub mod otlp;
pub mod process;
pub mod proxy;
pub mod reader;
pub mod services;
pub mod stack;
pub mod stalled;
pub mod tls;
pub mod traceparent;
pub mod wait;
pub mod ws;

pub use api::{Api, ApiResponse, User};
pub use db::TestDb;
pub use dispatch::{event_body, fresh_event_id, DispatchClient, Reply};
pub use env::TEST_SECRET;
pub use metrics::{metric, Metrics};
pub use nats::{Nats, NatsSecurity, Role};
pub use otako_common::close::CloseCode;
pub use process::Proc;
pub use proxy::Proxy;
pub use reader::{Reader, Seen};
pub use stack::{mint_token, Gateway, Stack};
pub use stalled::StalledClient;
pub use ws::{expect_all_quiet, Auth, Incoming, WsClient, ARRIVE, QUIET};
