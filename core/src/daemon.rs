//! `kproxy run`: starts the actors and the chosen dataplane and keeps them running.
