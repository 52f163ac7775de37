//! The Redis store for Sentinel (under construction).
