//! What each worker saw, one JSON object per line, written straight to the file (no buffer) so
//! that a line written before a `kill -9` is on disk: the audit explains every uncertain key from
//! these lines.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// One thing a worker saw or did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "e", rename_all = "snake_case")]
pub enum Entry {
    /// A worker incarnation started.
    Start {
        /// The worker's name (`w<index>.<incarnation>`).
        worker: String,
        /// Its process id.
        pid: u32,
    },
    /// The work of `once` began under `token`.
    Run {
        /// The key.
        key: String,
        /// The generation's token.
        token: i64,
        /// The worker.
        worker: String,
    },
    /// A ledger write was attempted.
    Write {
        /// The key.
        key: String,
        /// The token it carried.
        token: i64,
        /// `accepted`, `rejected: …`, `not applied: …` or `unknown: …`.
        verdict: String,
    },
    /// The worker is about to kill itself (or, in memory, be aborted) right after an accepted
    /// ledger write, before the completion is recorded.
    Killing {
        /// The key.
        key: String,
        /// The token.
        token: i64,
        /// The worker (its whole process dies, with every other execution in it).
        worker: String,
    },
    /// The work stalls before its ledger write: the process stops itself (`ms` 0; the
    /// coordinator resumes it), or, in memory, the task sleeps `ms`.
    Stalling {
        /// The key.
        key: String,
        /// The token.
        token: i64,
        /// For how long.
        ms: u64,
    },
    /// `once` returned.
    Done {
        /// The key.
        key: String,
        /// `Once::kind()`, or `error` when `once` itself failed.
        kind: String,
        /// Whether Sentinel reported the outcome uncertain.
        uncertain: bool,
        /// The outcome's token, if any.
        token: Option<i64>,
        /// How long `once` took, in µs.
        us: u64,
        /// The error or failure, if any.
        detail: Option<String>,
    },
    /// The decorator dropped the reply of an applied claim.
    LostClaim {
        /// The key.
        key: String,
        /// The claim's request id.
        request: String,
        /// The granted token, when the dropped answer was a grant.
        granted: Option<i64>,
    },
    /// The client sent again a claim whose reply was dropped (or that failed in transit), and got
    /// this answer.
    ClaimRetried {
        /// The key.
        key: String,
        /// The request id.
        request: String,
        /// The token of the dropped grant, if it was one.
        granted: Option<i64>,
        /// What the retry answered (`acquired`, `busy`, …).
        answer: String,
        /// The token in that answer.
        token: Option<i64>,
        /// True when a dropped grant came back as the same grant (adopted).
        adopted: bool,
        /// The claim failed on a real connection (not dropped by the decorator): whether it was
        /// applied is unknown.
        #[serde(default)]
        in_transit: bool,
    },
    /// The decorator dropped the reply of an applied completion.
    LostComplete {
        /// The key.
        key: String,
        /// The token.
        token: i64,
    },
    /// The client sent again a completion whose reply was dropped.
    CompleteRetried {
        /// The key.
        key: String,
        /// The token.
        token: i64,
        /// Whether the store accepted the repeat.
        ok: bool,
        /// The refusal, if not.
        detail: Option<String>,
    },
    /// Sabotage: a side effect applied without Sentinel's consent.
    Sabotage {
        /// The key.
        key: String,
        /// The made-up token it carried.
        token: i64,
    },
    /// A queue operation failed (it is retried).
    QueueError {
        /// Which one.
        op: String,
        /// The error.
        detail: String,
    },
    /// The worker stopped on request.
    Exit {
        /// How many deliveries it handled.
        deliveries: u64,
    },
}

/// A journal line: the entry and when it was written (ms since the Unix epoch, this machine's
/// clock; for people reading the journals, not for the audit).
#[derive(Serialize, Deserialize)]
struct Line {
    t: u64,
    #[serde(flatten)]
    entry: Entry,
}

/// An append-only journal file.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: Mutex<File>,
}

impl Journal {
    /// Creates (or appends to) the journal at `path`.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Journal {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry with a single `write` call. Errors are reported on stderr once per
    /// entry: a journal that cannot be written makes the audit report unexplained outcomes, which
    /// is the honest result.
    pub fn log(&self, entry: &Entry) {
        let line = Line {
            t: crate::unix_micros() / 1000,
            entry: entry.clone(),
        };
        let mut line = match serde_json::to_vec(&line) {
            Ok(line) => line,
            Err(e) => {
                eprintln!("journal: cannot encode {entry:?}: {e}");
                return;
            }
        };
        line.push(b'\n');
        let mut file = match self.file.lock() {
            Ok(file) => file,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Err(e) = file.write_all(&line) {
            eprintln!("journal {}: {e}", self.path.display());
        }
    }
}

/// The journals of a run: each file's name (without `.jsonl`) with its entries.
pub type Journals = Vec<(String, Vec<Entry>)>;

/// Reads every `*.jsonl` journal in `dir`, by file name (without the extension). A torn last line
/// (a process killed mid-write) is skipped and counted.
pub fn read_all(dir: &Path) -> std::io::Result<(Journals, usize)> {
    let mut journals = Vec::new();
    let mut torn = 0;
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path)?;
        let mut entries = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str::<Line>(line) {
                Ok(line) => entries.push(line.entry),
                Err(_) => torn += 1,
            }
        }
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        journals.push((name, entries));
    }
    Ok((journals, torn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_files() {
        let dir = std::env::temp_dir().join(format!("chaos-journal-{}", crate::unix_micros()));
        std::fs::create_dir_all(&dir).unwrap();
        let journal = Journal::create(&dir.join("w0.0.jsonl")).unwrap();
        let entry = Entry::Run {
            key: "k".into(),
            token: 7,
            worker: "w0.0".into(),
        };
        journal.log(&entry);
        std::fs::write(dir.join("w1.0.jsonl"), "{\"e\":\"run\",\"key\":\"x").unwrap();
        let (journals, torn) = read_all(&dir).unwrap();
        assert_eq!(journals[0], ("w0.0".to_owned(), vec![entry]));
        assert!(journals[1].1.is_empty());
        assert_eq!(torn, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
