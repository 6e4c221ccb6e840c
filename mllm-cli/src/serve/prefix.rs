//! Prompt-prefix reuse: the KV caches of finished sequences, a bounded number of positions
//! of them, kept so that a request whose prompt starts with the same tokens (the same
//! system prompt, the next turn of a chat) skips that prefix's prefill. No model code:
//! entries are taken whole (one user at a time) and put back when their sequence ends.

use std::sync::Mutex;

use mllm::models::KvCache;

/// Shorter shared prefixes are not worth a lookup's bookkeeping.
const MIN_PREFIX: usize = 16;

struct Entry {
    /// The tokens whose keys and values the cache holds, in order.
    tokens: Vec<u32>,
    cache: KvCache,
}

pub struct PrefixCache {
    /// Oldest first.
    entries: Mutex<Vec<Entry>>,
    /// Most cache positions (allocated rows) kept in all.
    max_positions: usize,
}

fn shared_len(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PrefixCache {
    pub fn new(max_positions: usize) -> PrefixCache {
        PrefixCache { entries: Mutex::new(Vec::new()), max_positions }
    }

    /// The kept cache sharing the longest prefix with `prompt` (at least `MIN_PREFIX`
    /// tokens, and not the whole prompt: its last token must still run to give logits),
    /// cut to that prefix, with room for `capacity` positions; and the prefix's length.
    pub fn take(&self, prompt: &[u32], capacity: usize) -> Option<(KvCache, usize)> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (at, len) = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, shared_len(&e.tokens, prompt).min(prompt.len() - 1)))
            .max_by_key(|&(_, n)| n)?;
        if len < MIN_PREFIX {
            return None;
        }
        let mut e = entries.remove(at);
        e.cache.reuse(len, capacity).ok()?;
        Some((e.cache, len))
    }

    /// Keep `cache` (holding `tokens`), dropping the oldest entries beyond the bound.
    pub fn put(&self, tokens: Vec<u32>, cache: KvCache) {
        if cache.allocated() > self.max_positions || tokens.len() < MIN_PREFIX {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.push(Entry { tokens, cache });
        while entries.iter().map(|e| e.cache.allocated()).sum::<usize>() > self.max_positions {
            entries.remove(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache_with(n: usize) -> KvCache {
        let mut c = KvCache::new(1, 64, 2).unwrap();
        for _ in 0..n {
            c.write(0, &[1.0, 2.0], &[3.0, 4.0]).unwrap();
            c.advance(1);
        }
        c
    }

    #[test]
    fn the_longest_shared_prefix_is_taken_and_cut() {
        let p = PrefixCache::new(1 << 20);
        let a: Vec<u32> = (0..40).collect();
        let mut b: Vec<u32> = (0..30).collect();
        b.extend(100..110);
        p.put(a.clone(), cache_with(40));
        p.put(b.clone(), cache_with(40));
        let mut prompt: Vec<u32> = (0..35).collect();
        prompt.push(7);
        let (c, n) = p.take(&prompt, 50).expect("a prefix");
        assert_eq!((n, c.len(), c.capacity()), (35, 35, 50));
        // Taken: the other entry shares only 30.
        assert_eq!(p.take(&prompt, 50).map(|(_, n)| n), Some(30));
        assert!(p.take(&prompt, 50).is_none(), "nothing left");
        // A prompt equal to a kept sequence still leaves its last token to run.
        p.put(a.clone(), cache_with(40));
        assert_eq!(p.take(&a, 64).map(|(_, n)| n), Some(39));
        // Too short a prefix, or none kept at all.
        p.put(a.clone(), cache_with(40));
        assert!(p.take(&[0, 1, 2, 3, 9], 64).is_none());
        assert!(PrefixCache::new(0).take(&a, 64).is_none());
    }

    #[test]
    fn the_bound_drops_the_oldest() {
        let p = PrefixCache::new(300);
        for first in 0..3u32 {
            let tokens: Vec<u32> = (first * 1000..first * 1000 + 40).collect();
            p.put(tokens, cache_with(40)); // 64 positions allocated each
        }
        let entries = p.entries.lock().unwrap();
        assert_eq!(entries.len(), 3);
        drop(entries);
        let small = PrefixCache::new(100);
        small.put((0..40).collect(), cache_with(40));
        small.put((1000..1040).collect(), cache_with(40));
        let entries = small.entries.lock().unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].tokens[0], 1000);
    }
}
