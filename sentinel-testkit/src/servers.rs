//! Real PostgreSQL and Redis servers for backend test suites (under construction).
