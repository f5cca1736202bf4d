//! The verifier's memory: bounded LRUs of what verified (API tokens, users,
//! signing keys) and, apart from them, of what was refused (unknown, revoked
//! or expired token hashes, unknown key ids), so a flood of bad tokens only
//! churns the negative cache and never evicts a good entry.
//!
//! Entries are used only while the LISTEN connection is up, and a lookup
//! stores its result only if no invalidation arrived while it ran (the
//! `generation` check): otherwise a revoke committed during the lookup could
//! be overwritten by the row read just before it.

use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use lru::LruCache;
use sha2::{Digest, Sha256};

use crate::store::{TokenRow, UserState};

/// Signing keys in use at once: a handful (current, next, previous).
const KEY_CAPACITY: usize = 64;

pub(super) struct Entry<T> {
    pub value: T,
    pub at: Instant,
    /// API tokens: when `last_used_at` was last written.
    pub touched: Instant,
}

pub(super) struct Caches {
    pub tokens: LruCache<[u8; 32], Entry<TokenRow>>,
    pub users: LruCache<i64, Entry<UserState>>,
    pub keys: LruCache<String, Entry<[u8; 32]>>,
    /// Hashes of refused API tokens and of `kid:<kid>` for unknown key ids.
    pub negative: LruCache<[u8; 32], Instant>,
    /// Bumped by every invalidation and every (re)connect of the listener.
    pub generation: u64,
    pub listening: bool,
    max_age: Duration,
}

/// The negative-cache key of an unknown key id.
pub(super) fn kid_key(kid: &str) -> [u8; 32] {
    Sha256::digest(format!("kid:{kid}").as_bytes()).into()
}

fn nonzero(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN)
}

impl Caches {
    pub fn new(capacity: usize, negative_capacity: usize, max_age: Duration) -> Self {
        Self {
            tokens: LruCache::new(nonzero(capacity)),
            users: LruCache::new(nonzero(capacity)),
            keys: LruCache::new(nonzero(KEY_CAPACITY.min(capacity))),
            negative: LruCache::new(nonzero(negative_capacity)),
            generation: 0,
            listening: false,
            max_age,
        }
    }

    fn fresh(&self, at: Instant) -> bool {
        self.listening && at.elapsed() < self.max_age
    }

    /// The snapshot a lookup compares against before storing its result.
    pub fn generation(&self) -> Option<u64> {
        self.listening.then_some(self.generation)
    }

    fn may_store(&self, generation: Option<u64>) -> bool {
        self.listening && generation == Some(self.generation)
    }

    pub fn is_refused(&mut self, key: &[u8; 32]) -> bool {
        match self.negative.get(key) {
            Some(at) if self.listening && at.elapsed() < self.max_age => true,
            Some(_) => {
                self.negative.pop(key);
                false
            }
            None => false,
        }
    }

    pub fn refuse(&mut self, generation: Option<u64>, key: [u8; 32]) {
        if self.may_store(generation) {
            self.negative.put(key, Instant::now());
        }
    }

    /// A fresh token entry; `touch_due` says whether `last_used_at` should be
    /// written now (and marks it written).
    pub fn token(&mut self, hash: &[u8; 32], touch_every: Duration) -> Option<(TokenRow, bool)> {
        let at = self.tokens.peek(hash).map(|e| e.at)?;
        if !self.fresh(at) {
            self.tokens.pop(hash);
            return None;
        }
        let e = self.tokens.get_mut(hash)?;
        let due = e.touched.elapsed() >= touch_every;
        if due {
            e.touched = Instant::now();
        }
        Some((e.value.clone(), due))
    }

    pub fn put_token(&mut self, generation: Option<u64>, hash: [u8; 32], row: TokenRow) {
        if self.may_store(generation) {
            let now = Instant::now();
            self.tokens.put(
                hash,
                Entry {
                    value: row,
                    at: now,
                    touched: now,
                },
            );
        }
    }

    pub fn forget_token(&mut self, hash: &[u8; 32]) {
        self.tokens.pop(hash);
    }

    pub fn user(&mut self, id: i64) -> Option<UserState> {
        let at = self.users.peek(&id).map(|e| e.at)?;
        if !self.fresh(at) {
            self.users.pop(&id);
            return None;
        }
        self.users.get(&id).map(|e| e.value.clone())
    }

    pub fn put_user(&mut self, generation: Option<u64>, user: UserState) {
        if self.may_store(generation) {
            let now = Instant::now();
            self.users.put(
                user.id,
                Entry {
                    value: user,
                    at: now,
                    touched: now,
                },
            );
        }
    }

    pub fn key(&mut self, kid: &str) -> Option<[u8; 32]> {
        let at = self.keys.peek(kid).map(|e| e.at)?;
        if !self.fresh(at) {
            self.keys.pop(kid);
            return None;
        }
        self.keys.get(kid).map(|e| e.value)
    }

    pub fn put_key(&mut self, generation: Option<u64>, kid: &str, public: [u8; 32]) {
        if self.may_store(generation) {
            let now = Instant::now();
            self.keys.put(
                kid.to_string(),
                Entry {
                    value: public,
                    at: now,
                    touched: now,
                },
            );
        }
    }

    /// Applies one notification payload: `user:<id>`, `token:<sha256 hex>`,
    /// `key:<kid>`; anything else (`all`, a payload from a newer release)
    /// drops everything, which is always safe.
    pub fn invalidate(&mut self, payload: &str) {
        self.generation += 1;
        match payload.split_once(':') {
            Some(("user", id)) => match id.parse::<i64>() {
                Ok(id) => {
                    self.users.pop(&id);
                }
                Err(_) => self.clear(),
            },
            Some(("token", hex_hash)) => match hex::decode(hex_hash)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
            {
                Some(hash) => {
                    self.tokens.pop(&hash);
                    self.negative.pop(&hash);
                }
                None => self.clear(),
            },
            Some(("key", kid)) => {
                self.keys.pop(kid);
                self.negative.pop(&kid_key(kid));
            }
            _ => self.clear(),
        }
    }

    /// Drops everything: only when the listener (re)connects, since
    /// notifications may have been missed while it was down.
    pub fn clear(&mut self) {
        self.generation += 1;
        self.tokens.clear();
        self.users.clear();
        self.keys.clear();
        self.negative.clear();
    }

    pub fn set_listening(&mut self, listening: bool) {
        if listening {
            self.clear();
        }
        self.listening = listening;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Role;

    fn row(id: i64) -> TokenRow {
        TokenRow {
            id,
            user_id: None,
            service: Some("ingest".into()),
            role: Role::Viewer,
            expires_at: None,
            revoked: false,
        }
    }

    fn listening(cap: usize, neg: usize) -> Caches {
        let mut c = Caches::new(cap, neg, Duration::from_secs(600));
        c.set_listening(true);
        c
    }

    #[test]
    fn nothing_is_used_or_stored_while_not_listening() {
        let mut c = Caches::new(4, 4, Duration::from_secs(600));
        assert_eq!(c.generation(), None);
        c.put_token(Some(0), [1; 32], row(1));
        assert!(c.token(&[1; 32], Duration::MAX).is_none());
        let g = {
            c.set_listening(true);
            c.generation()
        };
        c.put_token(g, [1; 32], row(1));
        assert!(c.token(&[1; 32], Duration::MAX).is_some());
        c.set_listening(false);
        assert!(
            c.token(&[1; 32], Duration::MAX).is_none(),
            "not trusted while deaf"
        );
    }

    #[test]
    fn a_lookup_overtaken_by_an_invalidation_stores_nothing() {
        let mut c = listening(4, 4);
        let g = c.generation();
        c.invalidate(&format!("token:{}", hex::encode([1u8; 32])));
        c.put_token(g, [1; 32], row(1));
        c.refuse(g, [2; 32]);
        assert!(c.token(&[1; 32], Duration::MAX).is_none());
        assert!(!c.is_refused(&[2; 32]));
    }

    #[test]
    fn invalidations_are_targeted() {
        let mut c = listening(4, 4);
        let g = c.generation();
        c.put_token(g, [1; 32], row(1));
        c.put_token(g, [2; 32], row(2));
        c.refuse(g, [3; 32]);
        c.invalidate(&format!("token:{}", hex::encode([1u8; 32])));
        assert!(c.token(&[1; 32], Duration::MAX).is_none());
        assert!(c.token(&[2; 32], Duration::MAX).is_some(), "others stay");
        assert!(c.is_refused(&[3; 32]));
        c.invalidate("user:not-a-number");
        assert!(
            c.token(&[2; 32], Duration::MAX).is_none(),
            "unknown payloads drop all"
        );
    }

    #[test]
    fn bad_tokens_never_evict_good_ones() {
        let mut c = listening(2, 3);
        let g = c.generation();
        c.put_token(g, [1; 32], row(1));
        c.put_token(g, [2; 32], row(2));
        for i in 0..1_000u32 {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_be_bytes());
            k[31] = 0xff;
            c.refuse(g, k);
        }
        assert_eq!(c.negative.len(), 3, "the negative cache is bounded");
        assert!(c.token(&[1; 32], Duration::MAX).is_some());
        assert!(c.token(&[2; 32], Duration::MAX).is_some());
        // Good entries are bounded too, least recently used out first.
        c.token(&[1; 32], Duration::MAX);
        c.put_token(g, [9; 32], row(9));
        assert_eq!(c.tokens.len(), 2);
        assert!(c.token(&[2; 32], Duration::MAX).is_none());
        assert!(c.token(&[1; 32], Duration::MAX).is_some());
    }

    #[test]
    fn entries_age_out() {
        let mut c = Caches::new(4, 4, Duration::ZERO);
        c.set_listening(true);
        let g = c.generation();
        c.put_token(g, [1; 32], row(1));
        c.refuse(g, [2; 32]);
        assert!(c.token(&[1; 32], Duration::MAX).is_none());
        assert!(!c.is_refused(&[2; 32]));
    }

    #[test]
    fn touch_is_due_once_per_interval() {
        let mut c = listening(4, 4);
        let g = c.generation();
        c.put_token(g, [1; 32], row(1));
        assert_eq!(c.token(&[1; 32], Duration::ZERO).map(|t| t.1), Some(true));
        assert_eq!(c.token(&[1; 32], Duration::MAX).map(|t| t.1), Some(false));
    }
}
