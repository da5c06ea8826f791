//! Value-based scrubbing of secrets from anything the engine writes or logs.
//!
//! The engine registers every secret value it knows (its own Redis password today; decrypted module
//! secrets later) and passes all step output and error text through [`Scrubber::scrub`] before it
//! reaches Redis or the logs. Matching is on values, not on key names, so a secret printed by a step
//! under any name is still caught.
//!
//! # How values are found
//!
//! All registered values go into one Aho-Corasick automaton, rebuilt on [`Scrubber::add`] (rare),
//! and [`Scrubber::scrub`] makes one pass over its input whatever the number of secrets or the order
//! they were added in. The rule is: **every byte that belongs to some occurrence of some registered
//! value is masked**, and each maximal run of such bytes becomes one [`MASK`].
//!
//! That is why the automaton uses `MatchKind::Standard` with an *overlapping* search, and not
//! `MatchKind::LeftmostLongest`. Leftmost-longest masks a value that contains another one whole, but
//! it reports non-overlapping matches only: with the values `abcdef` and `defghi`, the input
//! `xxabcdefghiyy` matches `abcdef` at 2..8, the search resumes at `g`, and `ghi` (half of the
//! second secret) would be left in clear. The overlapping search reports every occurrence of every
//! value (`abcdef` at 2..8 and `defghi` at 5..11); masking the union of those ranges leaves no byte
//! of either, gives the same result as leftmost-longest for a value that contains another (the
//! union is the longer one), and does not depend on the order the values were added in.
//!
//! A value that itself contains a byte of [`MASK`] (`*`) could be re-formed by a mask and the text
//! next to it; for such sets, `scrub` masks its own output again until no value occurs in it (each
//! pass shortens the text, since a masked run is at least [`MIN_SECRET_LEN`] bytes and the mask is
//! shorter, so this ends).

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, PoisonError, RwLock};

use aho_corasick::automaton::Automaton;
use aho_corasick::nfa::noncontiguous::NFA;
use aho_corasick::{Input, MatchKind};

/// Replacement text for a scrubbed value.
pub const MASK: &str = "***";

/// Values shorter than this are not scrubbed: masking "1" or "ab" everywhere would destroy output
/// and protect nothing.
pub const MIN_SECRET_LEN: usize = 4;

// Masking must shorten what it masks: it bounds the re-masking loop in `Scrubber::scrub`.
const _: () = assert!(MASK.len() < MIN_SECRET_LEN);

/// The set of secret values to mask. Clones share the same set: a value added through one clone is
/// masked by all of them. `Debug` prints how many values there are, never the values.
#[derive(Clone, Default)]
pub struct Scrubber {
    /// `None` until the first value is added. The matcher is rebuilt on `add` and swapped in whole,
    /// so `scrub` only holds the lock long enough to clone the `Arc`.
    matcher: Arc<RwLock<Option<Arc<Matcher>>>>,
}

impl fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scrubber")
            .field("secrets", &self.len())
            .finish()
    }
}

impl Scrubber {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a value to remove from everything written from now on.
    pub fn add(&self, secret: impl AsRef<[u8]>) {
        let s = secret.as_ref();
        if s.len() < MIN_SECRET_LEN {
            return;
        }
        // A panic elsewhere while the lock was held leaves nothing half-done here (the matcher is
        // swapped in whole), so a poisoned lock is taken over rather than turned into a panic.
        let mut slot = self.matcher.write().unwrap_or_else(PoisonError::into_inner);
        let mut secrets = match slot.as_deref() {
            Some(m) if m.secrets.iter().any(|k| k == s) => return,
            Some(m) => m.secrets.clone(),
            None => Vec::new(),
        };
        secrets.push(s.to_vec());
        *slot = Some(Arc::new(Matcher::new(secrets)));
    }

    /// Returns `input` with every registered value replaced by [`MASK`] (see the module docs for
    /// values that overlap or contain one another).
    pub fn scrub(&self, input: &[u8]) -> Vec<u8> {
        // The guard is a temporary: the lock is released before the scan.
        let matcher = self
            .matcher
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(matcher) = matcher else {
            return input.to_vec();
        };
        let Some(mut out) = matcher.mask_once(input) else {
            return input.to_vec();
        };
        if matcher.mask_sensitive {
            while let Some(again) = matcher.mask_once(&out) {
                out = again;
            }
        }
        out
    }

    pub fn scrub_str(&self, input: &str) -> String {
        String::from_utf8_lossy(&self.scrub(input.as_bytes())).into_owned()
    }

    /// How many distinct values are registered.
    fn len(&self) -> usize {
        self.matcher
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map_or(0, |m| m.secrets.len())
    }
}

/// The registered values and the automaton built from them.
struct Matcher {
    /// Distinct values, in the order they were added.
    secrets: Vec<Vec<u8>>,
    /// `None` only if the automaton could not be built (far beyond any real set of secrets): the
    /// values are then searched one by one, with the same result.
    automaton: Option<NFA>,
    /// Some value contains a byte of [`MASK`], so masking may re-form it.
    mask_sensitive: bool,
}

impl Matcher {
    fn new(secrets: Vec<Vec<u8>>) -> Self {
        // The noncontiguous NFA itself rather than the `AhoCorasick` front, which would also compile
        // in the DFA and contiguous kinds it may choose at run time (~150 KB of code in every
        // agent, for a handful of short values that need neither). Standard is the only match
        // kind with an overlapping search: see the module docs.
        let automaton = NFA::builder()
            .match_kind(MatchKind::Standard)
            .build(&secrets)
            .ok();
        let mask_sensitive = secrets
            .iter()
            .any(|s| s.iter().any(|b| MASK.as_bytes().contains(b)));
        Matcher {
            secrets,
            automaton,
            mask_sensitive,
        }
    }

    /// The ranges to mask: the union of all occurrences of all values, as maximal disjoint ranges
    /// in order.
    fn ranges(&self, haystack: &[u8]) -> Vec<Range<usize>> {
        if let Some(ac) = &self.automaton {
            // Cannot fail with MatchKind::Standard and an unanchored search; should it ever, the
            // one-by-one search below gives the same ranges.
            if let Ok(matches) = ac.try_find_overlapping_iter(Input::new(haystack)) {
                return union(matches.map(|m| m.range()));
            }
        }
        union(naive_occurrences(&self.secrets, haystack))
    }

    /// `haystack` with each masked range replaced by [`MASK`], or `None` if no value occurs in it.
    fn mask_once(&self, haystack: &[u8]) -> Option<Vec<u8>> {
        let ranges = self.ranges(haystack);
        if ranges.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(haystack.len());
        let mut at = 0;
        for r in ranges {
            out.extend_from_slice(&haystack[at..r.start]);
            out.extend_from_slice(MASK.as_bytes());
            at = r.end;
        }
        out.extend_from_slice(&haystack[at..]);
        Some(out)
    }
}

/// Every occurrence of every value, found one value at a time (the fallback, and the tests' oracle).
fn naive_occurrences<'a>(
    secrets: &'a [Vec<u8>],
    haystack: &'a [u8],
) -> impl Iterator<Item = Range<usize>> + 'a {
    secrets.iter().flat_map(move |s| {
        haystack
            .windows(s.len())
            .enumerate()
            .filter(move |(_, w)| *w == s.as_slice())
            .map(move |(i, _)| i..i + s.len())
    })
}

/// Merges ranges that overlap or touch into maximal disjoint ranges, sorted by start.
///
/// An overlapping search reports matches by increasing end, and then the ranges are merged as they
/// come, in memory bounded by the number of disjoint ranges. Ranges in any other order are also
/// handled: they are collected, sorted and merged at the end.
fn union(ranges: impl IntoIterator<Item = Range<usize>>) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    let mut by_end = true;
    for r in ranges {
        if r.is_empty() {
            continue;
        }
        if by_end && out.last().is_some_and(|last| r.end < last.end) {
            by_end = false;
        }
        if !by_end {
            out.push(r);
            continue;
        }
        // `out` is disjoint and sorted, and `r` ends at or after all of it: it absorbs the tail of
        // `out` that it overlaps or touches.
        let mut start = r.start;
        while let Some(last) = out.last() {
            if start > last.end {
                break;
            }
            start = start.min(last.start);
            out.pop();
        }
        out.push(start..r.end);
    }
    if !by_end {
        out.sort_unstable_by_key(|r| r.start);
        let mut merged: Vec<Range<usize>> = Vec::with_capacity(out.len());
        for r in out {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        out = merged;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_values_anywhere() {
        let s = Scrubber::new();
        s.add("hunter22");
        s.add("hunter22-long");
        s.add("ab"); // too short: ignored
        let out = s.scrub_str("pw=hunter22-long and hunter22, ab");
        assert_eq!(out, "pw=*** and ***, ab");
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
    }

    /// No substring of `secret` of at least MIN_SECRET_LEN bytes is left in `out`.
    fn assert_no_fragment(out: &[u8], secret: &[u8]) {
        for len in MIN_SECRET_LEN..=secret.len() {
            for frag in secret.windows(len) {
                assert!(
                    !contains(out, frag),
                    "{:?} is left in {:?}",
                    String::from_utf8_lossy(frag),
                    String::from_utf8_lossy(out)
                );
            }
        }
    }

    fn scrubber(secrets: &[&[u8]]) -> Scrubber {
        let s = Scrubber::new();
        for secret in secrets {
            s.add(secret);
        }
        s
    }

    #[test]
    fn overlapping_secrets_leave_no_fragment_in_either_add_order() {
        let (a, b): (&[u8], &[u8]) = (b"abcdef", b"defghi");
        for order in [[a, b], [b, a]] {
            let out = scrubber(&order).scrub(b"xxabcdefghiyy");
            // Leftmost-longest alone would give "xx***ghiyy".
            assert_eq!(out, b"xx***yy", "add order {order:?}");
            assert_no_fragment(&out, a);
            assert_no_fragment(&out, b);
            assert!(!contains(&out, b"ghi") && !contains(&out, b"abc"));
        }
    }

    #[test]
    fn a_secret_containing_another_is_masked_whole() {
        let (inner, outer): (&[u8], &[u8]) = (b"pass1234", b"mypass1234word");
        for order in [[inner, outer], [outer, inner]] {
            let s = scrubber(&order);
            assert_eq!(
                s.scrub_str("a mypass1234word b pass1234 c"),
                "a *** b *** c",
                "add order {order:?}"
            );
            // The inner one at the edge of the outer one's text, and the outer one cut short.
            assert_eq!(s.scrub_str("mypass1234wor"), "my***wor");
        }
    }

    #[test]
    fn output_does_not_depend_on_add_order() {
        let sets: [&[&[u8]]; 4] = [
            &[b"abcdef", b"defghi"],
            &[b"hunter22", b"hunter22-long", b"22-lo"],
            &[b"aaaa", b"aaab", b"baaa"],
            &[b"token-1234", b"1234-token", b"en-1"],
        ];
        let input = b"xxabcdefghiyy hunter22-long 22-lon aaaaabaaaab token-1234-token en-12";
        for set in sets {
            let forward = scrubber(set).scrub(input);
            let reversed: Vec<&[u8]> = set.iter().rev().copied().collect();
            assert_eq!(forward, scrubber(&reversed).scrub(input));
            for secret in set {
                assert_no_fragment(&forward, secret);
            }
        }
    }

    #[test]
    fn without_secrets_the_input_is_copied() {
        let s = Scrubber::new();
        assert_eq!(s.scrub(b"anything \xff at all"), b"anything \xff at all");
        s.add("abc"); // too short: still none
        assert_eq!(s.scrub_str("abc abcd"), "abc abcd");
    }

    #[test]
    fn clones_share_the_set_and_debug_never_prints_secrets() {
        let s = Scrubber::new();
        let clone = s.clone();
        s.add("s3cr3t-value");
        s.add("s3cr3t-value"); // counted once
        assert_eq!(clone.scrub_str("x s3cr3t-value y"), "x *** y");
        let debug = format!("{clone:?} {s:#?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        // Nor as the bytes a derived Debug of Vec<u8> would print.
        assert!(!debug.contains("115, 51"), "{debug}");
        assert_eq!(format!("{s:?}"), "Scrubber { secrets: 1 }");
    }

    #[test]
    fn a_poisoned_lock_does_not_stop_scrubbing() {
        let s = Scrubber::new();
        s.add("before-poison");
        let clone = s.clone();
        let _ = std::thread::spawn(move || {
            let _guard = clone.matcher.write().unwrap();
            panic!("poison the lock");
        })
        .join();
        assert!(s.matcher.is_poisoned());
        s.add("after-poison");
        assert_eq!(s.scrub_str("before-poison after-poison"), "*** ***");
    }

    #[test]
    fn a_secret_with_mask_bytes_is_not_reformed_by_masking() {
        // Masking "abcd" in "ab*abcd" gives "ab****", which holds the secret "ab**".
        let s = scrubber(&[b"abcd", b"ab**"]);
        let out = s.scrub(b"ab*abcd");
        assert!(
            !contains(&out, b"ab**") && !contains(&out, b"abcd"),
            "{out:?}"
        );
    }

    #[test]
    fn union_merges_in_any_order() {
        assert_eq!(union([5..11, 2..8, 11..14, 20..24]), vec![2..14, 20..24]);
        assert_eq!(union([20..24, 2..8, 11..14, 5..11]), vec![2..14, 20..24]);
        assert_eq!(union([3..7, 0..9]), vec![0..9]);
        assert_eq!(union(std::iter::empty()), Vec::<Range<usize>>::new());
    }

    /// A small deterministic PRNG (SplitMix64), so the property test needs no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn bytes(&mut self, alphabet: &[u8], len: usize) -> Vec<u8> {
            (0..len)
                .map(|_| alphabet[self.below(alphabet.len())])
                .collect()
        }
    }

    /// What `scrub` must give in one pass: each maximal run of bytes covered by some occurrence of
    /// some secret, found byte by byte, replaced by one MASK.
    fn oracle(secrets: &[Vec<u8>], input: &[u8]) -> Vec<u8> {
        let mut covered = vec![false; input.len()];
        for r in naive_occurrences(secrets, input) {
            covered[r].iter_mut().for_each(|c| *c = true);
        }
        let mut out = Vec::new();
        for (i, &b) in input.iter().enumerate() {
            if !covered[i] {
                out.push(b);
            } else if i == 0 || !covered[i - 1] {
                out.extend_from_slice(MASK.as_bytes());
            }
        }
        out
    }

    #[test]
    fn property_no_registered_secret_survives() {
        let mut rng = Rng(0x5eed_0f5c_2b00_0001);
        for case in 0..2000 {
            // A tiny alphabet makes overlaps and containment frequent; every 4th case also has
            // the mask's own byte in it.
            let alphabet: &[u8] = if case % 4 == 0 { b"ab*" } else { b"abc" };
            let secrets: Vec<Vec<u8>> = (0..1 + rng.below(5))
                .map(|_| {
                    let len = MIN_SECRET_LEN + rng.below(5);
                    rng.bytes(alphabet, len)
                })
                .collect();
            // Random text with secrets and pieces of secrets spliced in.
            let mut input = Vec::new();
            for _ in 0..rng.below(8) {
                match rng.below(3) {
                    0 => {
                        let len = rng.below(6);
                        input.extend(rng.bytes(alphabet, len));
                    }
                    1 => input.extend_from_slice(&secrets[rng.below(secrets.len())]),
                    _ => {
                        let s = &secrets[rng.below(secrets.len())];
                        let from = rng.below(s.len());
                        input.extend_from_slice(&s[from..]);
                    }
                }
            }

            let s = Scrubber::new();
            for secret in &secrets {
                s.add(secret);
            }
            let out = s.scrub(&input);
            for secret in &secrets {
                assert!(
                    !contains(&out, secret),
                    "case {case}: {:?} survives in {:?} (from {:?})",
                    String::from_utf8_lossy(secret),
                    String::from_utf8_lossy(&out),
                    String::from_utf8_lossy(&input),
                );
            }

            let reversed = Scrubber::new();
            for secret in secrets.iter().rev() {
                reversed.add(secret);
            }
            assert_eq!(
                out,
                reversed.scrub(&input),
                "case {case}: add order matters"
            );

            let mask_sensitive = secrets.iter().any(|k| k.contains(&b'*'));
            if !mask_sensitive {
                assert_eq!(out, oracle(&secrets, &input), "case {case}");
            }
            // The one-by-one fallback finds the same ranges as the automaton.
            let m = Matcher::new(secrets.clone());
            let fallback = Matcher {
                automaton: None,
                ..Matcher::new(secrets.clone())
            };
            assert_eq!(m.ranges(&input), fallback.ranges(&input), "case {case}");
        }
    }
}
