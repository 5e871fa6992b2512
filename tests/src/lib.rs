//! The end-to-end harness: real nats-server, PostgreSQL, gateway and backend
//! processes, started per test, and clients that speak the contract
//! (`shared/CONTRACT.md`): the HTTP API, the client WebSocket and the
//! dispatch subject.
//!
//! Each test gets its own NATS (single server or cluster) and its own database
//! on one PostgreSQL server shared by all test processes, so tests run in
//! parallel without seeing each other. Logs go to
//! `target/otako-e2e/logs/<test binary>/<test>/<process>.log`; when a test
//! fails, the tail of each log is printed.
//!
//! Run with `cargo build --workspace --bins && cargo test -p otako-e2e`.

pub mod api;
pub mod db;
pub mod dispatch;
pub mod env;
pub mod nats;
pub mod ops_support;
pub mod process;
pub mod proxy;
pub mod sessions_support;
pub mod stack;
pub mod wait;
pub mod ws;

pub use api::{Api, ApiResponse, User};
pub use db::TestDb;
pub use dispatch::{event_body, fresh_event_id, DispatchClient, Reply};
pub use env::TEST_SECRET;
pub use nats::Nats;
pub use process::Proc;
pub use proxy::Proxy;
pub use stack::{mint_token, Gateway, Stack};
pub use ws::{Auth, Incoming, WsClient, ARRIVE, QUIET};
