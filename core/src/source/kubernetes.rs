//! Watches Services, EndpointSlices and this node through the Kubernetes API (kube-rs).
