//! Herald: events from an LLM API gateway's bus, budget alerts, and live delivery to SignalR
//! clients across many gateway nodes. This crate is the binary's library: configuration,
//! command line, start-up and Herald's own HTTP endpoints. The work is done by the crates it
//! wires: `herald-ingest`, `herald-gateway`, `herald-store`, `herald-backplane` and the pure
//! `herald-domain`.
#![forbid(unsafe_code)]

pub mod cli;
pub mod commands;
pub mod configuration;
pub mod dashboard;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod reference;
pub mod server;
pub mod startup;
pub mod telemetry;
pub mod tls;
pub mod values;
