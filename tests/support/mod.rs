//! Test infrastructure of the operator tier: an in-process Kubernetes API server and a kubelet
//! stand-in that runs Jobs' pods as local processes.
//!
//! ```ignore
//! mod support;
//! use support::{apiserver::ApiServer, kubelet::Kubelet};
//!
//! let server = ApiServer::start(); // 127.0.0.1:<free port>, plain HTTP, its own thread
//! server.kubectl_ok(&["apply", "-f", "crds/stresstest.yaml"]); // --kubeconfig + --cache-dir
//! let client = server.client(); // kube::Client, default namespace "default"
//! let kubelet = Kubelet::start(&server, env!("CARGO_BIN_EXE_stampede").into());
//! ```
//!
//! Plain `kubectl` works too: `kubectl --kubeconfig <server.kubeconfig_path()> --cache-dir
//! <server.cache_dir()> …` (the cache dir only keeps discovery of different test servers apart).
#![allow(dead_code)]

pub mod apiserver;
pub mod chart;
pub mod kubelet;
pub mod schema;
