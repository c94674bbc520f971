//! The operator's pure parts: the child objects a StressTest needs ([`builders`]) and the status
//! written back to it ([`status`]). Both are spec in, objects out: no client, no clock, so they
//! are unit-tested without a cluster.

pub mod builders;
pub mod cleanup;
pub mod dashboard;
pub mod decide;
pub mod leader;
pub mod metrics;
pub mod observe;
pub mod reconcile;
pub mod status;
