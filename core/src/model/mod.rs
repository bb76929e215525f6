//! The validated internal form of the API objects kproxy consumes (Service, EndpointSlice, Node).
