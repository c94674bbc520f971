//! Stampede: capacity and stress tests for Milvus vector databases, as a Kubernetes operator and
//! a CLI. See DESIGN.md (shared) and README.md.

pub mod analysis;
pub mod data;
pub mod metrics;
pub mod milvus;
pub mod pb;
