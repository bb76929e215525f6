//! Reads Services, EndpointSlices and optionally the Node from a folder of YAML manifests.
