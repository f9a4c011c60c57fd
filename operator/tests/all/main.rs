//! The operator against a real control plane (etcd, kube-apiserver with
//! RBAC, kube-controller-manager) and a real nats-server, with real gateway
//! and runtime processes: no mocks. `scripts/test.sh` builds the control
//! plane's binaries (`scripts/k8s/tools.sh`) and installs nats-server.

mod auth;
mod autoscale;
mod chart;
mod compile_ahead;
mod crd;
mod fetches;
mod images;
mod lifecycle;
mod module;
mod module_gc;
mod monitoring;
mod nats_security;
mod resilience;
mod schedule;
mod startup;
mod support;
mod tenancy;
mod watches;
