//! Stampede: capacity and stress tests for Milvus vector databases, as a Kubernetes operator and
//! a CLI. See DESIGN.md (shared) and README.md.

pub mod analysis;
pub mod bottleneck;
pub mod chart;
pub mod cli;
pub mod controller;
pub mod dashboard;
pub mod data;
pub mod grpc;
pub mod load;
pub mod metrics;
pub mod milvus;
pub mod observe;
pub mod pb;
pub mod prepare;
pub mod report;
pub mod result;
pub mod run;
pub mod schedule;
pub mod spec;
pub mod worker;
