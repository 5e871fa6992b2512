//! What the Otako gateway and backend both need to agree on: the events and
//! the other wire types, close codes, signed tokens, the message row, the
//! database schema and how telemetry is set up.

pub mod bus;
pub mod cli;
pub mod client_frame;
pub mod close;
pub mod db;
pub mod event;
pub mod history;
pub mod http;
pub mod message;
pub mod nats;
pub mod proto;
pub mod service;
pub mod telemetry;
pub mod token;
