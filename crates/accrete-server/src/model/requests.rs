//! The request ids a model has acted on, so a retried create, commit, rollback or import
//! (the client lost the answer, or the server restarted before sending it) is answered
//! with what the first call did instead of acting twice.
//!
//! A call that made a version stores its id in that version's record, in the same write:
//! that is durable, and the index is rebuilt from the retained records at start. A commit
//! that found nothing to commit made no version; its id is remembered in memory only (a
//! retry after a restart commits what the restarted server holds, which is the head).
use accrete_core::VersionRecord;
use std::collections::VecDeque;

/// How many recent request ids a model remembers (a retry comes within minutes).
const KEEP: usize = 4096;

#[derive(Debug, Default)]
pub(super) struct Requests {
    /// (request id, the version it made or answered with, whether it made that version)
    recent: VecDeque<(String, u64, bool)>,
}

impl Requests {
    /// The index of the retained records, oldest first.
    pub(super) fn of(records: &[VersionRecord]) -> Requests {
        let mut r = Requests::default();
        for rec in records {
            r.note(&rec.request, rec.version, true);
        }
        r
    }

    /// What an earlier call with this id did: the version, and whether it made it.
    pub(super) fn find(&self, id: &str) -> Option<(u64, bool)> {
        if id.is_empty() {
            return None;
        }
        self.recent.iter().rev().find(|(r, ..)| r == id).map(|&(_, v, made)| (v, made))
    }

    pub(super) fn note(&mut self, id: &str, version: u64, made: bool) {
        if id.is_empty() {
            return;
        }
        if self.recent.len() == KEEP {
            self.recent.pop_front();
        }
        self.recent.push_back((id.to_string(), version, made));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use accrete_core::VersionKind;

    #[test]
    fn ids_are_found_and_the_oldest_forgotten() {
        let mut a = VersionRecord::new(2, VersionKind::Manual);
        a.request = "a".into();
        let b = VersionRecord::new(3, VersionKind::Policy);
        let mut r = Requests::of(&[a, b]);
        assert_eq!(r.find("a"), Some((2, true)));
        assert_eq!(r.find(""), None);
        r.note("c", 3, false);
        assert_eq!(r.find("c"), Some((3, false)));
        for i in 0..KEEP {
            r.note(&i.to_string(), 9, true);
        }
        assert_eq!((r.find("a"), r.find("c")), (None, None));
        assert_eq!(r.find("0"), Some((9, true)));
    }
}
