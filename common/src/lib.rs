//! What the Otako gateway and backend both need to agree on: the dispatch wire
//! types, signed tokens, the database schema and how telemetry is set up.

pub mod cli;
pub mod db;
pub mod nats;
pub mod proto;
pub mod service;
pub mod telemetry;
pub mod token;
