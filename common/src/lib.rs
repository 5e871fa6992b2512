//! What the Otako gateway and backend both need to agree on: the events and
//! the other wire types, close codes, signed tokens, the message row, the
//! database schema and how telemetry is set up.
//!
//! Without the default `runtime` feature only the pure wire types build
//! (events, cursors, tokens, bus signatures, close codes, client frames):
//! that is what the fuzz targets link.

pub mod bus;
#[cfg(feature = "runtime")]
pub mod cli;
pub mod client_frame;
pub mod close;
#[cfg(feature = "runtime")]
pub mod db;
pub mod event;
pub mod history;
#[cfg(feature = "runtime")]
pub mod http;
#[cfg(feature = "runtime")]
pub mod message;
#[cfg(feature = "runtime")]
pub mod nats;
pub mod proto;
#[cfg(feature = "runtime")]
pub mod service;
#[cfg(feature = "runtime")]
pub mod telemetry;
pub mod token;
