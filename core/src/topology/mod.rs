//! Resolves services and endpoints for this node as upstream kube-proxy does.
