//! The PostgreSQL store for Sentinel (under construction).
