//! What ackgate tells its operator: Prometheus metrics, `ackgate stats`
//! (a reader of them) and logs.

pub mod exporter;
pub mod logging;
pub mod metrics;
pub mod stats;
