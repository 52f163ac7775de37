//! The Lua scripts, one per transition, loaded at compile time from `lua/`.
//!
//! Every script is `lua/lib.lua` (shared helpers: exact 64-bit arithmetic, record decoding, event
//! append) followed by the transition's own file. Each is sent with `EVALSHA`; when the server
//! answers `NOSCRIPT` (after a restart or `SCRIPT FLUSH`) it is loaded and sent again, which is
//! safe because a `NOSCRIPT` reply means the script did not run.

use redis::Script;

macro_rules! script {
    ($file:literal) => {
        concat!(
            include_str!("../lua/lib.lua"),
            "\n",
            include_str!(concat!("../lua/", $file))
        )
    };
    // A transition with a fast section: run first, before the helpers of lib.lua are defined
    // (defining them costs more than answering a cached claim), it handles the common cases and
    // falls through to the full script for everything else.
    (fast $file:literal) => {
        concat!(
            include_str!(concat!("../lua/fast/", $file)),
            "\n",
            include_str!("../lua/lib.lua"),
            "\n",
            include_str!(concat!("../lua/", $file))
        )
    };
}

/// The compiled-in scripts.
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) claim: Script,
    pub(crate) start: Script,
    pub(crate) heartbeat: Script,
    pub(crate) complete: Script,
    pub(crate) abort: Script,
    pub(crate) reconcile: Script,
    pub(crate) force_complete: Script,
    pub(crate) reset: Script,
    pub(crate) purge: Script,
    pub(crate) lease_acquire: Script,
    pub(crate) lease_release: Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            claim: Script::new(script!(fast "claim.lua")),
            start: Script::new(script!("start.lua")),
            heartbeat: Script::new(script!("heartbeat.lua")),
            complete: Script::new(script!(fast "complete.lua")),
            abort: Script::new(script!("abort.lua")),
            reconcile: Script::new(script!("reconcile.lua")),
            force_complete: Script::new(script!("force_complete.lua")),
            reset: Script::new(script!("reset.lua")),
            purge: Script::new(script!("purge.lua")),
            lease_acquire: Script::new(script!("lease_acquire.lua")),
            lease_release: Script::new(script!("lease_release.lua")),
        }
    }

    /// The scripts, hashed once per process.
    pub(crate) fn get() -> &'static Scripts {
        static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
        SCRIPTS.get_or_init(Scripts::new)
    }
}
