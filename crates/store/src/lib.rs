//! The durable record (docs/operations.md, "What is stored where"): virtual keys and budget alert state. PostgreSQL in
//! production; an in-memory store for `standalone` with no configuration. Both apply the same
//! pure budget rules from `herald_domain::budget`.
#![forbid(unsafe_code)]

#[cfg(feature = "test-support")]
pub mod hooked;
mod memory;
mod postgres;
mod rates;
mod tls;

mod contract;

pub use contract::{PendingAlert, SharedStore, SpendOutcome, SpendRules, Store, StoreError};
pub use memory::MemoryStore;
pub use postgres::{PostgresStore, migrate};
pub use tls::{ProbeError, check_url as check_database_url, probe};
