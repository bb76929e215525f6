//! The namespace lab: nodes, pods and clients as network namespaces on veth pairs.
