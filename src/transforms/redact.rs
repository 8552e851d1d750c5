//! Secret redaction: replaces credentials in text and JSON values with `[REDACTED:<rule>]`.
//!
//! Rules are data (`transforms/redaction.toml` plus a pipeline's own `rules`): a regex, and
//! keywords, of which every match contains one. How a text is searched:
//!
//! 1. The text is lowercased (ASCII, which keeps every byte offset), [`CHUNK_BYTES`] at a time
//!    so that the copy stays in cache, and searched for the keywords' fingerprints (a rare piece of each), by a few searchers of at most
//!    [`KEYWORDS_PER_SEARCHER`] each: few enough for Teddy, the SIMD searcher of aho-corasick,
//!    whose buckets are chosen from the byte frequencies of ordinary text so that few positions
//!    need a check. A text shorter than [`SMALL_TEXT_BYTES`] (most strings of an event: ids,
//!    names, times) is searched by one automaton over all fingerprints instead. A hit is
//!    checked against the whole keywords around it.
//! 2. Each keyword found gives each of its rules a window where a match containing the hit must lie: as
//!    far on each side as the rule's longest possible match, computed from its pattern (see
//!    [`shape`]), and only the hit's line when the pattern cannot match a line feed. A rule whose
//!    matches are unbounded and may span lines gets the whole text.
//! 3. Each rule's regex runs on its (merged) windows only; a user rule without keywords runs on
//!    the whole text of every call. A rule whose every match starts with one of its keywords
//!    (see [`starts_with_keyword`]) runs anchored at each keyword start instead.
//! 4. Matches of different rules that overlap are replaced as one: their union, named after the
//!    rule of the earliest-starting, longest match. Text that is already a marker is left alone.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind, packed};
use regex::{Regex, RegexSet};
use regex_automata::meta;
use regex_automata::util::captures::Captures;
use regex_automata::{Anchored, Input};

/// The built-in rules. The integrator adjusts this path when moving the file.
const BUILTIN_TOML: &str = include_str!("../../transforms/redaction.toml");

/// What a redacted span becomes: `[REDACTED:<rule name>]`.
const MARKER_PREFIX: &str = "[REDACTED:";

/// Fingerprints per searcher. The searchers do not look for the keywords themselves but for
/// one piece of each, its fingerprint: the keyword itself when it is shorter than
/// [`FINGERPRINT_BYTES`], else its 4 bytes that ordinary text holds the least (`-beg` of
/// `-----begin`, `assw` of `passw`); a hit is then checked against the whole keywords around it.
/// Teddy, the SIMD searcher of aho-corasick, compares the first `min(4, shortest pattern)` bytes
/// at every position, for at most 64 patterns in 8 buckets (16 beyond 32, at half the speed).
/// Each searcher is a pass over the text, and each bucket that lets a position through costs a
/// check of its patterns; so the short fingerprints have searchers of their own, and the 4-byte
/// ones are grouped into buckets that let few positions through (see [`buckets`]). Measured with
/// callgrind, replaying 20,000 generated events through classify and redact: the 59 long
/// keywords' prefixes in 3 searchers of 20, 291M instructions in Teddy and 481M in redaction; their
/// 57 distinct fingerprints in 2 searchers of 29, 217M and 400M.
const KEYWORDS_PER_SEARCHER: usize = 32;

/// The length of a long keyword's fingerprint (see [`KEYWORDS_PER_SEARCHER`]).
const FINGERPRINT_BYTES: usize = 4;

/// Texts shorter than this are searched by one automaton over all keywords (a DFA), which
/// costs less than starting every Teddy searcher. In the strings of generated events (32,000
/// of 35,659 are under 32 bytes) the threshold 64 gave 1,290 MB/s against 1,045 without.
const SMALL_TEXT_BYTES: usize = 64;

/// Where [`Redactor::searchers`] keeps the marker's searcher and the small texts' automaton.
const MARKER_SEARCHER: usize = 0;
const SMALL_TEXT_SEARCHER: usize = 1;

/// The keyword searchers see the text in lowercase, a chunk of this many bytes at a time, so
/// that the copy and their passes over it stay in the core's cache.
const CHUNK_BYTES: usize = 32 << 10;

thread_local! {
    static LOWERCASE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An anchored rule whose matches are unbounded is tried at no more places than this in one
/// window, each try costing up to the rest of the window; with more, one search of the
/// window costs less.
const MAX_ANCHORED_STARTS: usize = 16;

/// Windows of one rule closer than this are searched with one regex call: a call costs more
/// than scanning this many bytes, since most rules start with a literal the regex skips to.
const WINDOW_GAP: usize = 256;

/// One rule as written in redaction.toml or in a pipeline config's `rules`. A rule without
/// keywords is allowed in a pipeline config: it then runs over the whole of every text, which
/// is slow for large texts (the built-in rules all have keywords).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    pub pattern: String,
    #[serde(default)]
    pub keywords: Vec<String>,
    #[serde(default)]
    pub secret_group: Option<usize>,
    #[serde(default)]
    pub examples: Vec<String>,
    #[serde(default)]
    pub counter_examples: Vec<String>,
}

/// The transform's config keys: `rules` (extra rules, added to the built-ins), `allow` (regexes;
/// a match that an allow pattern matches in full is never redacted; for a rule with a
/// `secret_group`, the pattern is matched against that group, the text that would be replaced),
/// `builtin` (default true: include transforms/redaction.toml, its rules and its allow list).
///
/// `Default` has `builtin: true`, like a config that leaves the key out.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactConfig {
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default = "yes")]
    pub builtin: bool,
}

impl Default for RedactConfig {
    fn default() -> Self {
        RedactConfig {
            rules: Vec::new(),
            allow: Vec::new(),
            builtin: true,
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, thiserror::Error)]
pub enum RedactError {
    #[error(
        "redaction rule `{rule}` has an invalid pattern: {message}\n\
         (patterns use Rust regex syntax: no look-around, no back-references)"
    )]
    BadPattern { rule: String, message: String },
    #[error(
        "redaction allow pattern #{index} `{pattern}` is invalid: {message}\n\
         (patterns use Rust regex syntax: no look-around, no back-references)"
    )]
    BadAllowPattern {
        index: usize,
        pattern: String,
        message: String,
    },
    #[error("the built-in redaction rules (transforms/redaction.toml) do not parse: {0}")]
    BadBuiltin(String),
    #[error(
        "redaction rule #{index} has an empty `name`; give it a kebab-case name such as `my-api-key`"
    )]
    EmptyName { index: usize },
    #[error(
        "redaction rule name `{name}` may only contain ASCII letters, digits, `-`, `_` and `.` \
         (it appears in the replacement `[REDACTED:<name>]`)"
    )]
    BadName { name: String },
    #[error(
        "redaction rule `{name}` is defined twice; rename one of them \
         (set `builtin = false` to replace the built-in rules instead)"
    )]
    DuplicateName { name: String },
    #[error(
        "redaction rule `{rule}` has secret_group = {group}, but its pattern has only {groups} \
         capture group(s); use a group number from 0 (whole match) to {groups}"
    )]
    SecretGroupOutOfRange {
        rule: String,
        group: usize,
        groups: usize,
    },
    #[error(
        "redaction rule `{rule}` has an empty keyword; remove it or write the literal text that every match contains"
    )]
    EmptyKeyword { rule: String },
    #[error("the redaction keywords could not be compiled: {0}")]
    Keywords(String),
}

/// The file format of transforms/redaction.toml.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    /// Allow patterns that come with the built-in rules (placeholders such as `${VAR}`).
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    rules: Vec<RuleConfig>,
}

fn parse_builtin() -> Result<RuleFile, RedactError> {
    toml::from_str(BUILTIN_TOML).map_err(|e| RedactError::BadBuiltin(e.to_string()))
}

#[derive(Clone)]
struct Rule {
    name: String,
    regex: meta::Regex,
    /// The capture group that is replaced; 0 is the whole match.
    secret_group: usize,
    shape: Shape,
    /// Every match starts with one of the rule's keywords (see [`starts_with_keyword`]): the
    /// regex then runs anchored at each place a keyword starts, forward only, instead of
    /// searching the window around it.
    anchored: bool,
}

/// The compiled redaction rules. Send + Sync; share it through an `Arc`. A clone shares the
/// compiled regexes and searchers.
#[derive(Clone)]
pub struct Redactor {
    rules: Vec<Rule>,
    /// The lowercase keywords of all rules.
    keywords: Vec<Keyword>,
    /// The keywords' distinct fingerprints (see [`KEYWORDS_PER_SEARCHER`]).
    fingerprints: Vec<Fingerprint>,
    /// Searchers over the fingerprints: at [`MARKER_SEARCHER`] the lowercase [`MARKER_PREFIX`]
    /// only, at [`SMALL_TEXT_SEARCHER`] one automaton over all fingerprints for texts under
    /// [`SMALL_TEXT_BYTES`], then the Teddy searchers for longer texts.
    searchers: Vec<KeywordSearcher>,
    /// For each searcher, the fingerprint of each of its patterns (none for the marker's).
    searched: Vec<Vec<usize>>,
    /// The length of the shortest keyword: a shorter text holds no match of a rule with
    /// keywords.
    min_keyword_len: usize,
    /// Rules without keywords: they run over every text.
    always: Vec<usize>,
    /// Each allow pattern anchored at both ends, matched against the text to be replaced.
    allow: Option<RegexSet>,
}

/// A lowercase keyword and the rules it enables.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Keyword {
    text: String,
    rules: Vec<usize>,
}

/// A piece of one or more keywords that the searchers look for.
#[derive(Clone)]
struct Fingerprint {
    bytes: Vec<u8>,
    /// The keywords that hold it: index in [`Redactor::keywords`], and where in the keyword it
    /// starts.
    holders: Vec<(usize, usize)>,
    /// The fingerprints (index, and how many bytes after this one's start) that a hit of this
    /// one may hide: the search reports no overlapping hits, nor a shorter one that starts at
    /// the same place.
    hides: Vec<(usize, usize)>,
}

/// A span to replace, with the rule that found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Span {
    start: usize,
    end: usize,
    rule: usize,
}

static BUILTIN: LazyLock<Redactor> = LazyLock::new(|| {
    Redactor::build(&RedactConfig::default())
        .expect("built-in redaction rules compile (checked by tests)")
});

impl Redactor {
    pub fn new(config: &RedactConfig) -> Result<Self, RedactError> {
        // The built-in rules alone are compiled once per process (validation, the dead letters
        // and the transform all ask for them): about 40 ms of CPU each time.
        if config.builtin && config.rules.is_empty() && config.allow.is_empty() {
            return Ok(BUILTIN.clone());
        }
        Self::build(config)
    }

    fn build(config: &RedactConfig) -> Result<Self, RedactError> {
        let mut rules = Vec::new();
        let mut allow = Vec::new();
        if config.builtin {
            let file = parse_builtin()?;
            rules.extend(file.rules);
            allow.extend(file.allow);
        }
        rules.extend(config.rules.iter().cloned());
        // Checked here so that an error gives the pattern's place in the config's `allow`.
        for (index, pattern) in config.allow.iter().enumerate() {
            Regex::new(pattern).map_err(|e| RedactError::BadAllowPattern {
                index,
                pattern: pattern.clone(),
                message: e.to_string(),
            })?;
        }
        allow.extend(config.allow.iter().cloned());
        Self::compile(&rules, &allow)
    }

    /// The built-in rules only, compiled once.
    pub fn builtin() -> &'static Redactor {
        &BUILTIN
    }

    /// The rules of transforms/redaction.toml.
    pub fn builtin_rules() -> Vec<RuleConfig> {
        parse_builtin()
            .expect("transforms/redaction.toml parses (checked by tests)")
            .rules
    }

    fn compile(configs: &[RuleConfig], allow: &[String]) -> Result<Self, RedactError> {
        let mut rules = Vec::with_capacity(configs.len());
        let mut keyword_ids: HashMap<String, usize> = HashMap::new();
        let mut keyword_rules: Vec<Vec<usize>> = Vec::new();
        let mut always = Vec::new();
        for (index, config) in configs.iter().enumerate() {
            check_name(index, &config.name)?;
            if rules.iter().any(|r: &Rule| r.name == config.name) {
                return Err(RedactError::DuplicateName {
                    name: config.name.clone(),
                });
            }
            let regex = meta::Regex::new(&config.pattern).map_err(|e| RedactError::BadPattern {
                rule: config.name.clone(),
                message: e
                    .syntax_error()
                    .map_or_else(|| e.to_string(), ToString::to_string),
            })?;
            let groups = regex.captures_len() - 1;
            let secret_group = config.secret_group.unwrap_or(0);
            if secret_group > groups {
                return Err(RedactError::SecretGroupOutOfRange {
                    rule: config.name.clone(),
                    group: secret_group,
                    groups,
                });
            }
            let rule_index = rules.len();
            if config.keywords.is_empty() {
                always.push(rule_index);
            }
            for keyword in &config.keywords {
                if keyword.is_empty() {
                    return Err(RedactError::EmptyKeyword {
                        rule: config.name.clone(),
                    });
                }
                let id = *keyword_ids
                    .entry(keyword.to_ascii_lowercase())
                    .or_insert_with(|| {
                        keyword_rules.push(Vec::new());
                        keyword_rules.len() - 1
                    });
                if !keyword_rules[id].contains(&rule_index) {
                    keyword_rules[id].push(rule_index);
                }
            }
            let shape = shape(&config.pattern);
            rules.push(Rule {
                name: config.name.clone(),
                // Anchored searches from each keyword cost at most the window each; a rule
                // whose matches may run over lines without bound keeps to one window search.
                anchored: (shape.max_len.is_some() || !shape.multiline)
                    && starts_with_keyword(&config.pattern, &config.keywords),
                shape,
                regex,
                secret_group,
            });
        }

        let mut keywords: Vec<Keyword> = keyword_ids
            .into_iter()
            .map(|(text, id)| Keyword {
                text,
                rules: std::mem::take(&mut keyword_rules[id]),
            })
            .collect();
        keywords.sort_unstable();
        let fingerprints = fingerprints(&keywords);
        let patterns: Vec<&[u8]> = fingerprints.iter().map(|f| f.bytes.as_slice()).collect();
        let index_of = |pattern: &[u8]| {
            fingerprints
                .iter()
                .position(|f| f.bytes == pattern)
                .expect("a fingerprint")
        };

        // The marker has a searcher of its own, and so has a small text. For the others, the
        // short fingerprints and the long ones are split into searchers of their own.
        let marker_searcher = AhoCorasick::new([MARKER_PREFIX]) // one pattern: memmem
            .map_err(|e| RedactError::Keywords(e.to_string()))?;
        let small_text = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .kind(Some(AhoCorasickKind::DFA))
            .build(&patterns)
            .map_err(|e| RedactError::Keywords(e.to_string()))?;
        let mut searchers = vec![
            KeywordSearcher::Automaton(marker_searcher),
            KeywordSearcher::Automaton(small_text),
        ];
        let mut searched = vec![Vec::new(), (0..fingerprints.len()).collect()];
        let (short, long): (Vec<&[u8]>, Vec<&[u8]>) =
            patterns.iter().partition(|k| k.len() < FINGERPRINT_BYTES);
        let short_searchers = short.len().div_ceil(KEYWORDS_PER_SEARCHER);
        let long_searchers = long.len().div_ceil(KEYWORDS_PER_SEARCHER);
        let mut groups: Vec<Vec<&[u8]>> = short
            .chunks(short.len().div_ceil(short_searchers.max(1)).max(1))
            .map(<[&[u8]]>::to_vec)
            .collect();
        let long_buckets = buckets(&long, TEDDY_BUCKETS * long_searchers);
        groups.extend(long_buckets.chunks(TEDDY_BUCKETS).map(teddy_order));
        for group in &groups {
            searchers.push(KeywordSearcher::new(group)?);
            searched.push(group.iter().map(|p| index_of(p)).collect());
        }

        let allow = if allow.is_empty() {
            None
        } else {
            let anchored = allow.iter().map(|p| format!(r"\A(?:{p})\z"));
            // The user's patterns were checked in `new`: a failure here is the built-ins'.
            Some(RegexSet::new(anchored).map_err(|e| RedactError::BadBuiltin(e.to_string()))?)
        };

        Ok(Redactor {
            rules,
            min_keyword_len: keywords
                .iter()
                .map(|k| k.text.len())
                .min()
                .unwrap_or(usize::MAX),
            keywords,
            fingerprints,
            searchers,
            searched,
            always,
            allow,
        })
    }

    /// Replaces every secret in `text` with `[REDACTED:<rule>]`; returns true when it changed
    /// anything. Stays valid UTF-8.
    pub fn redact_string(&self, text: &mut String) -> bool {
        match self.redact_str(text) {
            Cow::Borrowed(_) => false,
            Cow::Owned(redacted) => {
                *text = redacted;
                true
            }
        }
    }

    /// Like [`Redactor::redact_string`]; borrows `text` when there is nothing to redact.
    pub fn redact_str<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let spans = self.find_spans(text);
        if spans.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for span in spans {
            out.push_str(&text[at..span.start]);
            out.push_str(MARKER_PREFIX);
            out.push_str(&self.rules[span.rule].name);
            out.push(']');
            at = span.end;
        }
        out.push_str(&text[at..]);
        Cow::Owned(out)
    }

    /// Every string in a JSON value, nested objects and arrays included (object keys are left
    /// alone).
    pub fn redact_value(&self, value: &mut serde_json::Value) -> bool {
        use serde_json::Value;
        match value {
            Value::String(s) => self.redact_string(s),
            Value::Array(items) => items
                .iter_mut()
                .fold(false, |changed, v| self.redact_value(v) | changed),
            Value::Object(map) => map
                .values_mut()
                .fold(false, |changed, v| self.redact_value(v) | changed),
            Value::Null | Value::Bool(_) | Value::Number(_) => false,
        }
    }

    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.name.as_str())
    }

    /// The spans to replace, sorted and disjoint.
    fn find_spans(&self, text: &str) -> Vec<Span> {
        if text.len() < self.min_keyword_len && self.always.is_empty() {
            return Vec::new();
        }
        let bytes = text.as_bytes();
        // Where each rule is searched; allocated at the first keyword hit.
        let mut places: Vec<Places> = Vec::new();
        let mut markers: Vec<(usize, usize)> = Vec::new();
        // The line of the last hit, found once for all hits on it.
        let mut line = (0, 0);
        // The marker's searcher runs only when there is something to redact.
        let keyword_searchers = if bytes.len() < SMALL_TEXT_BYTES {
            SMALL_TEXT_SEARCHER..SMALL_TEXT_SEARCHER + 1
        } else {
            SMALL_TEXT_SEARCHER + 1..self.searchers.len()
        };
        let mut on_hit = |found: usize, place: usize| {
            for (keyword, at) in self.keywords_at(bytes, found, place) {
                let keyword_end = at + keyword.text.len();
                if places.is_empty() {
                    places.resize(self.rules.len(), Places::default());
                }
                for &rule in &keyword.rules {
                    let shape = self.rules[rule].shape;
                    let (mut start, mut end) = match shape.max_len {
                        Some(n) => (
                            at.saturating_sub(n),
                            keyword_end.saturating_add(n).min(bytes.len()),
                        ),
                        None => (0, bytes.len()),
                    };
                    if !shape.multiline {
                        if !(line.0 <= at && keyword_end <= line.1) {
                            line = line_around(bytes, at, keyword_end);
                        }
                        start = start.max(line.0);
                        end = end.min(line.1);
                    }
                    add_window(&mut places[rule].windows, start, end);
                    if self.rules[rule].anchored {
                        places[rule].starts.push(at);
                    }
                }
            }
        };
        // Lowercasing ASCII keeps every byte offset; the searchers are then case-sensitive.
        // A chunk is searched with the fingerprints that start in it, so it takes as many bytes
        // of the next as the longest less one.
        LOWERCASE.with(|buffer| {
            let mut buffer = buffer.borrow_mut();
            let mut chunk = 0;
            while chunk < bytes.len() {
                let chunk_end = (chunk + CHUNK_BYTES).min(bytes.len());
                let scan_end = (chunk_end + FINGERPRINT_BYTES - 1).min(bytes.len());
                buffer.clear();
                buffer.extend(bytes[chunk..scan_end].iter().map(u8::to_ascii_lowercase));
                for (searcher, searched) in self.searchers[keyword_searchers.clone()]
                    .iter()
                    .zip(&self.searched[keyword_searchers.clone()])
                {
                    searcher.for_each_hit(&buffer, |hit| {
                        let place = chunk + hit.start();
                        if place < chunk_end {
                            on_hit(searched[hit.pattern().as_usize()], place);
                        }
                    });
                }
                chunk = chunk_end;
            }
        });
        if !self.always.is_empty() && places.is_empty() {
            places.resize(self.rules.len(), Places::default());
        }
        for &rule in &self.always {
            add_window(&mut places[rule].windows, 0, text.len());
        }

        let mut spans = Vec::new();
        for (rule, mut places) in places.into_iter().enumerate() {
            if places.windows.is_empty() {
                continue;
            }
            places.sort();
            let shape = self.rules[rule].shape;
            let mut captures = self.rules[rule].regex.create_captures();
            for &window in &places.windows {
                let starts = places.starts_in(window);
                let anchored = self.rules[rule].anchored
                    && (shape.max_len.is_some() || starts.len() <= MAX_ANCHORED_STARTS);
                let starts = anchored.then_some(starts);
                self.search(rule, text, window, starts, &mut captures, &mut spans);
            }
        }

        // A span that several rules found is checked against the allow list once.
        if self.allow.is_some() && !spans.is_empty() {
            sort_spans(&mut spans);
            let mut last: Option<(usize, usize, bool)> = None;
            spans.retain(|s| {
                let allowed = match last {
                    Some((start, end, allowed)) if (start, end) == (s.start, s.end) => allowed,
                    _ => self.allowed(&text[s.start..s.end]),
                };
                last = Some((s.start, s.end, allowed));
                !allowed
            });
        }
        // Text that is already a marker is never redacted again (idempotence).
        if !spans.is_empty() {
            self.searchers[MARKER_SEARCHER].for_each_hit(bytes, |hit| {
                if let Some(end) = marker_end(text, hit.start()) {
                    markers.push((hit.start(), end));
                }
            });
        }
        if !markers.is_empty() {
            markers.sort_unstable();
            spans.retain(|s| {
                let next = markers.partition_point(|&(_, end)| end <= s.start);
                markers.get(next).is_none_or(|&(start, _)| start >= s.end)
            });
        }
        merge_spans(spans)
    }

    /// The keywords (with where they start in `bytes`, in any case) around a hit of
    /// fingerprint `found` at `place`, and around the fingerprints that it may hide.
    fn keywords_at<'a>(
        &'a self,
        bytes: &'a [u8],
        found: usize,
        place: usize,
    ) -> impl Iterator<Item = (&'a Keyword, usize)> + 'a {
        std::iter::once((found, 0))
            .chain(self.fingerprints[found].hides.iter().copied())
            .flat_map(move |(f, shift)| {
                self.fingerprints[f]
                    .holders
                    .iter()
                    .map(move |&(id, offset)| (id, (place + shift).checked_sub(offset)))
            })
            .filter_map(|(id, at)| {
                let (keyword, at) = (&self.keywords[id], at?);
                bytes
                    .get(at..at + keyword.text.len())
                    .is_some_and(|b| b.eq_ignore_ascii_case(keyword.text.as_bytes()))
                    .then_some((keyword, at))
            })
    }

    /// Runs one rule over a window of `text` and pushes the candidates it finds (the allow list
    /// is checked afterwards, once for each distinct span). Matches start in the window and may
    /// take one character after it (a window that ends at a line feed keeps it as context); the
    /// regex sees the whole text as context for `\b`, `^` and `$`. Given `starts`, the
    /// keywords' places in the window (sorted), an anchored rule is tried at those only.
    fn search(
        &self,
        rule_index: usize,
        text: &str,
        window: (usize, usize),
        starts: Option<&[usize]>,
        captures: &mut Captures,
        out: &mut Vec<Span>,
    ) {
        let rule = &self.rules[rule_index];
        let (start, end) = (
            floor_boundary(text, window.0),
            ceil_boundary(text, window.1),
        );
        let limit = ceil_boundary(text, end + 1);
        let mut starts = starts.map(<[usize]>::iter);
        let mut at = start;
        loop {
            let input = match &mut starts {
                Some(starts) => match starts.find(|&&s| s >= at) {
                    Some(&s) => Input::new(text).span(s..limit).anchored(Anchored::Yes),
                    None => break,
                },
                None if at <= end => Input::new(text).span(at..limit),
                None => break,
            };
            // Without a secret group the match is the secret and no capture engine runs; with
            // one, the regex finds the match first and then runs its capture engine on the
            // match only (or, anchored, its one-pass engine straight away where it has one).
            let m = if rule.secret_group == 0 {
                rule.regex.search(&input)
            } else {
                rule.regex.search_captures(&input, captures);
                captures.get_match()
            };
            let Some(m) = m else {
                match starts {
                    Some(_) => continue,
                    None => break,
                }
            };
            at = if m.end() > m.start() {
                m.end()
            } else {
                ceil_boundary(text, m.end() + 1)
            };
            let (s, e) = if rule.secret_group == 0 {
                (m.start(), m.end())
            } else {
                match captures.get_group(rule.secret_group) {
                    Some(span) => (span.start, span.end),
                    None => continue,
                }
            };
            if s == e {
                continue;
            }
            out.push(Span {
                start: s,
                end: e,
                rule: rule_index,
            });
        }
    }

    fn allowed(&self, candidate: &str) -> bool {
        self.allow
            .as_ref()
            .is_some_and(|set| set.is_match(candidate))
    }
}

/// Whether every match of `pattern` starts with one of `keywords` (ASCII case-insensitively):
/// the pattern's prefixes, as regex-syntax's literal extractor finds them, are finitely many
/// and each starts with a keyword. `false` when that cannot be told.
fn starts_with_keyword(pattern: &str, keywords: &[String]) -> bool {
    use regex_syntax::hir::literal::{ExtractKind, Extractor};
    let Ok(hir) = regex_syntax::parse(pattern) else {
        return false;
    };
    let keywords: Vec<String> = keywords
        .iter()
        .filter(|k| !k.is_empty())
        .map(|k| k.to_ascii_lowercase())
        .collect();
    let prefixes = Extractor::new()
        .kind(ExtractKind::Prefix)
        .limit_total(4096)
        .extract(&hir);
    prefixes.literals().is_some_and(|literals| {
        !literals.is_empty()
            && literals.iter().all(|literal| {
                let literal = literal.as_bytes().to_ascii_lowercase();
                keywords.iter().any(|k| literal.starts_with(k.as_bytes()))
            })
    })
}

/// Sorts spans by start, longest first.
fn sort_spans(spans: &mut [Span]) {
    spans.sort_unstable_by(|a, b| {
        (a.start, std::cmp::Reverse(a.end), a.rule).cmp(&(
            b.start,
            std::cmp::Reverse(b.end),
            b.rule,
        ))
    });
}

/// Sorts spans and merges overlapping ones; a merged span keeps the rule of its earliest-starting,
/// longest part.
fn merge_spans(mut spans: Vec<Span>) -> Vec<Span> {
    sort_spans(&mut spans);
    let mut merged: Vec<Span> = Vec::with_capacity(spans.len());
    for span in spans {
        match merged.last_mut() {
            Some(last) if span.start < last.end => last.end = last.end.max(span.end),
            _ => merged.push(span),
        }
    }
    merged
}

/// Finds lowercase keywords in lowercased text: Teddy where the CPU has it, else an automaton.
#[derive(Clone)]
enum KeywordSearcher {
    Teddy(packed::Searcher),
    Automaton(AhoCorasick),
}

impl KeywordSearcher {
    fn new<P: AsRef<[u8]>>(patterns: &[P]) -> Result<Self, RedactError> {
        let teddy = packed::Config::new()
            .match_kind(packed::MatchKind::LeftmostLongest)
            .builder()
            .extend(patterns)
            .build();
        Ok(match teddy {
            Some(searcher) => KeywordSearcher::Teddy(searcher),
            None => KeywordSearcher::Automaton(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(patterns)
                    .map_err(|e| RedactError::Keywords(e.to_string()))?,
            ),
        })
    }

    /// Calls `f` with each keyword in `haystack`, leftmost-longest, without overlaps.
    fn for_each_hit(&self, haystack: &[u8], f: impl FnMut(aho_corasick::Match)) {
        match self {
            KeywordSearcher::Teddy(s) => s.find_iter(haystack).for_each(f),
            KeywordSearcher::Automaton(a) => a.find_iter(haystack).for_each(f),
        }
    }
}

/// Buckets of a Teddy searcher of at most 32 keywords.
const TEDDY_BUCKETS: usize = 8;

/// How often each ASCII byte occurs in ordinary text, per 100,000 bytes: the lowercased
/// Python 3.11 standard library (4.7 MB). It orders keywords into Teddy buckets ([`buckets`]).
#[rustfmt::skip]
const ORDINARY_TEXT_BYTES: [u32; 128] = [
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2811, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    29019, 25, 861, 391, 3, 85, 8, 955, 1067, 1068, 130, 85, 1025, 403, 1249, 107,
    255, 251, 140, 78, 67, 67, 55, 31, 74, 47, 796, 18, 58, 816, 145, 13,
    19, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 165, 71, 165, 4, 1698,
    41, 3847, 817, 2013, 2139, 7425, 2169, 925, 1278, 3824, 126, 410, 2870, 1551, 3901, 3567,
    1697, 76, 3985, 4236, 4873, 1562, 479, 525, 439, 674, 121, 40, 16, 40, 3, 0,
];

/// The distinct fingerprints of `keywords` (see [`KEYWORDS_PER_SEARCHER`]), sorted.
fn fingerprints(keywords: &[Keyword]) -> Vec<Fingerprint> {
    let mut fingerprints: Vec<Fingerprint> = Vec::new();
    for (id, keyword) in keywords.iter().enumerate() {
        let keyword = keyword.text.as_bytes();
        let at = fingerprint_at(keyword);
        let bytes = &keyword[at..(at + FINGERPRINT_BYTES).min(keyword.len())];
        match fingerprints.iter_mut().find(|f| f.bytes == bytes) {
            Some(f) => f.holders.push((id, at)),
            None => fingerprints.push(Fingerprint {
                bytes: bytes.to_vec(),
                holders: vec![(id, at)],
                hides: Vec::new(),
            }),
        }
    }
    fingerprints.sort_unstable_by(|a, b| a.bytes.cmp(&b.bytes));
    // `b` may hide behind `a` when it starts inside `a` and agrees with the rest of it.
    for a in 0..fingerprints.len() {
        let hidden: Vec<(usize, usize)> = (0..fingerprints.len())
            .flat_map(|b| (0..fingerprints[a].bytes.len()).map(move |shift| (b, shift)))
            .filter(|&(b, shift)| {
                let (rest, other) = (&fingerprints[a].bytes[shift..], &fingerprints[b].bytes);
                (a, 0) != (b, shift) && (rest.starts_with(other) || other.starts_with(rest))
            })
            .collect();
        fingerprints[a].hides = hidden;
    }
    fingerprints
}

/// Where in `keyword` its fingerprint starts: the [`FINGERPRINT_BYTES`] that cost the least as
/// a bucket of their own ([`bucket_cost`]), or 0 for a shorter keyword.
fn fingerprint_at(keyword: &[u8]) -> usize {
    let cost = |at: usize| bucket_cost(&[&keyword[at..at + FINGERPRINT_BYTES]]);
    (0..=keyword.len().saturating_sub(FINGERPRINT_BYTES))
        .min_by(|&a, &b| cost(a).total_cmp(&cost(b)))
        .unwrap_or(0)
}

/// What a Teddy bucket of `keywords` (of at least [`FINGERPRINT_BYTES`] each) costs in ordinary
/// text: the share of positions that its fingerprint lets through, that is whose first bytes
/// each have a low and a high nibble of some keyword's byte there, times the check of each of
/// its keywords that such a position costs. Where every keyword repeats the byte before, half
/// of the positions that got so far pass: runs such as `----` are far more common than their
/// bytes alone say.
fn bucket_cost<K: AsRef<[u8]>>(keywords: &[K]) -> f64 {
    let mut passing = 1.0;
    for k in 0..FINGERPRINT_BYTES {
        if k > 0 && keywords.iter().all(|w| w.as_ref()[k] == w.as_ref()[k - 1]) {
            passing *= 0.5;
            continue;
        }
        let low = keywords
            .iter()
            .fold(0u16, |m, w| m | 1 << (w.as_ref()[k] & 15));
        let high = keywords
            .iter()
            .fold(0u16, |m, w| m | 1 << (w.as_ref()[k] >> 4));
        let share: u32 = (0..128)
            .filter(|&b| low >> (b & 15) & 1 == 1 && high >> (b >> 4) & 1 == 1)
            .map(|b| ORDINARY_TEXT_BYTES[b])
            .sum();
        passing *= f64::from(share) / 100_000.0;
    }
    passing * (1.0 + 0.25 * keywords.len() as f64)
}

/// Groups `keywords` (of at least [`FINGERPRINT_BYTES`] each) into at most `count` Teddy
/// buckets of `keywords / count` keywords, rounded down or up: from one bucket per keyword, the
/// two buckets whose union costs the least more than they do apart are merged, until `count`
/// are left; then keywords move from the largest buckets to the smallest, where it costs the
/// least (measured in [`KEYWORDS_PER_SEARCHER`]). Even sizes let [`teddy_order`] give Teddy
/// exactly these buckets.
fn buckets<K: AsRef<[u8]> + Copy>(keywords: &[K], count: usize) -> Vec<Vec<K>> {
    let count = count.max(1);
    let most = keywords.len().div_ceil(count);
    let mut buckets: Vec<Vec<K>> = keywords.iter().map(|k| vec![*k]).collect();
    let mut cost: Vec<f64> = buckets.iter().map(|b| bucket_cost(b)).collect();
    let union = |a: &[K], b: &[K]| match a.len() + b.len() <= most {
        true => bucket_cost(&[a, b].concat()),
        false => f64::INFINITY,
    };
    // The extra cost of merging buckets i < j, kept up to date as buckets merge.
    let mut extra: Vec<Vec<f64>> = (0..buckets.len())
        .map(|i| {
            (0..buckets.len())
                .map(|j| match i < j {
                    true => union(&buckets[i], &buckets[j]) - cost[i] - cost[j],
                    false => f64::INFINITY,
                })
                .collect()
        })
        .collect();
    while buckets.len() > count {
        let (i, j) = (0..buckets.len())
            .flat_map(|i| (i + 1..buckets.len()).map(move |j| (i, j)))
            .min_by(|&(a, b), &(c, d)| extra[a][b].total_cmp(&extra[c][d]))
            .expect("two buckets or more");
        let merged = buckets.remove(j);
        buckets[i].extend(merged);
        cost.remove(j);
        extra.remove(j);
        extra.iter_mut().for_each(|row| {
            row.remove(j);
        });
        cost[i] = bucket_cost(&buckets[i]);
        for other in 0..buckets.len() {
            let (a, b) = (i.min(other), i.max(other));
            if a != b {
                extra[a][b] = union(&buckets[a], &buckets[b]) - cost[a] - cost[b];
            }
        }
    }
    // Even out: while sizes differ by more than one, the keyword that is the cheapest to move
    // goes from a largest bucket to a smallest.
    loop {
        let sizes = buckets.iter().map(Vec::len);
        let (Some(largest), Some(smallest)) = (sizes.clone().max(), sizes.min()) else {
            break;
        };
        if largest <= smallest + 1 {
            break;
        }
        let to = (0..buckets.len())
            .find(|&b| buckets[b].len() == smallest)
            .expect("a smallest bucket");
        let moved = |from: usize, at: usize| {
            let mut rest = buckets[from].clone();
            let keyword = rest.remove(at);
            bucket_cost(&rest) - bucket_cost(&buckets[from])
                + bucket_cost(&[&buckets[to][..], &[keyword]].concat())
        };
        let (from, at) = (0..buckets.len())
            .filter(|&b| buckets[b].len() == largest)
            .flat_map(|b| (0..largest).map(move |k| (b, k)))
            .min_by(|&(a, i), &(b, j)| moved(a, i).total_cmp(&moved(b, j)))
            .expect("a largest bucket");
        let keyword = buckets[from].remove(at);
        buckets[to].push(keyword);
    }
    buckets
}

/// The keywords of up to [`TEDDY_BUCKETS`] buckets in the order that makes Teddy put each
/// bucket's keywords together: it puts pattern `i` in bucket `7 - i % 8` (or, when its
/// fingerprint's low nibbles are those of an earlier pattern, in that one's bucket). That is
/// exact when the buckets' sizes differ by one at most, as [`buckets`] makes them; otherwise
/// Teddy's buckets would differ a little from these, which costs speed, never a match.
fn teddy_order<K: Copy>(buckets: &[Vec<K>]) -> Vec<K> {
    let mut buckets = buckets.to_vec();
    // The larger buckets first, so that only the last round of the loop below is short.
    buckets.sort_by_key(|bucket| std::cmp::Reverse(bucket.len()));
    let deepest = buckets.first().map_or(0, Vec::len);
    (0..deepest)
        .flat_map(|depth| {
            buckets
                .iter()
                .filter_map(move |bucket| bucket.get(depth).copied())
        })
        .collect()
}

/// Adds a window to a rule's list, merging it with the last one when they overlap or are less
/// than [`WINDOW_GAP`] apart.
fn add_window(list: &mut Vec<(usize, usize)>, start: usize, end: usize) {
    match list.last_mut() {
        Some(last) if start >= last.0 && start <= last.1 + WINDOW_GAP => last.1 = last.1.max(end),
        _ => list.push((start, end)),
    }
}

/// Where one rule is searched in a text: its windows, kept sorted and merged as they come, and,
/// for a rule that runs anchored, where its keywords start.
#[derive(Clone, Default)]
struct Places {
    windows: Vec<(usize, usize)>,
    starts: Vec<usize>,
}

impl Places {
    /// Sorts and merges what came from several searchers, whose hits interleave.
    fn sort(&mut self) {
        if !self.windows.is_sorted() {
            self.windows.sort_unstable();
            for (start, end) in std::mem::take(&mut self.windows) {
                add_window(&mut self.windows, start, end);
            }
        }
        self.starts.sort_unstable();
        self.starts.dedup();
    }

    /// The keyword starts in `window` (after [`Places::sort`]).
    fn starts_in(&self, (start, end): (usize, usize)) -> &[usize] {
        let first = self.starts.partition_point(|&s| s < start);
        let last = self.starts.partition_point(|&s| s <= end);
        &self.starts[first..last]
    }
}

/// The line (without its line feed) around `start..end`.
fn line_around(bytes: &[u8], start: usize, end: usize) -> (usize, usize) {
    let line_start = bytes[..start]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line_end = bytes[end..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(bytes.len(), |i| end + i);
    (line_start, line_end)
}

/// The end of a `[REDACTED:<name>]` marker that starts at `start`, if there is one.
fn marker_end(text: &str, start: usize) -> Option<usize> {
    let rest = text[start..].strip_prefix(MARKER_PREFIX)?;
    let name_len = rest.bytes().take_while(|&b| is_name_byte(b)).count();
    (name_len > 0 && rest.as_bytes().get(name_len) == Some(&b']'))
        .then_some(start + MARKER_PREFIX.len() + name_len + 1)
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

fn check_name(index: usize, name: &str) -> Result<(), RedactError> {
    if name.is_empty() {
        return Err(RedactError::EmptyName { index });
    }
    if !name.bytes().all(is_name_byte) {
        return Err(RedactError::BadName {
            name: name.to_string(),
        });
    }
    Ok(())
}

fn floor_boundary(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_boundary(text: &str, mut i: usize) -> usize {
    if i >= text.len() {
        return text.len();
    }
    while !text.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// What the engine needs to know about a rule's pattern to search only near its keywords.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    /// An upper bound of a match's length in bytes; `None` when unbounded.
    max_len: Option<usize>,
    /// Whether a match may contain a line feed.
    multiline: bool,
}

/// The [`Shape`] of a (valid) Rust regex pattern, found by a small parser of the regex syntax.
/// Both answers only need to be safe: every character that is not plainly ASCII counts as 4
/// bytes, an ASCII letter as 3 where the pattern is case-insensitive (`(?i)k` also matches the
/// 3-byte Kelvin sign), and anything not understood counts as unbounded and multi-line.
fn shape(pattern: &str) -> Shape {
    let chars: Vec<char> = pattern.chars().collect();
    let mut parser = ShapeParser {
        chars: &chars,
        pos: 0,
        case_insensitive: false,
        dot_matches_newline: false,
        newline: false,
    };
    match parser.alternation() {
        Some(max_len) if parser.pos == chars.len() => Shape {
            max_len,
            multiline: parser.newline,
        },
        _ => Shape {
            max_len: None,
            multiline: true,
        },
    }
}

/// `None` is unbounded.
fn add(a: Option<usize>, b: Option<usize>) -> Option<usize> {
    a?.checked_add(b?)
}

/// The parser returns `None` for syntax it does not understand, and `Some(bound)` otherwise.
struct ShapeParser<'a> {
    chars: &'a [char],
    pos: usize,
    /// Whether `(?i)` is in effect here.
    case_insensitive: bool,
    /// Whether `(?s)` is in effect here.
    dot_matches_newline: bool,
    /// Whether anything seen so far may match a line feed.
    newline: bool,
}

impl ShapeParser<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    /// Skips past the next `close`.
    fn skip_past(&mut self, close: char) -> Option<()> {
        while self.bump()? != close {}
        Some(())
    }

    /// Bytes matched by an ASCII literal or an ASCII class.
    fn ascii_width(&self) -> usize {
        if self.case_insensitive { 3 } else { 1 }
    }

    fn alternation(&mut self) -> Option<Option<usize>> {
        let mut longest = self.concat()?;
        while self.peek() == Some('|') {
            self.pos += 1;
            let next = self.concat()?;
            longest = longest.zip(next).map(|(a, b)| a.max(b));
        }
        Some(longest)
    }

    fn concat(&mut self) -> Option<Option<usize>> {
        let mut total = Some(0);
        while let Some(c) = self.peek() {
            if c == '|' || c == ')' {
                break;
            }
            let atom = self.atom()?;
            total = add(total, self.repetition(atom)?);
        }
        Some(total)
    }

    fn atom(&mut self) -> Option<Option<usize>> {
        Some(Some(match self.bump()? {
            '(' => return self.group(),
            '[' => self.class()?,
            '\\' => return self.escape(),
            '.' => {
                self.newline |= self.dot_matches_newline;
                4
            }
            '^' | '$' => 0,
            '\n' => {
                self.newline = true;
                1
            }
            c if c.is_ascii_alphabetic() => self.ascii_width(),
            c => c.len_utf8(),
        }))
    }

    /// After a `(`.
    fn group(&mut self) -> Option<Option<usize>> {
        let outer = (self.case_insensitive, self.dot_matches_newline);
        if self.peek() == Some('?') {
            self.pos += 1;
            if self.peek() == Some('P') {
                self.pos += 1;
            }
            if self.peek() == Some('<') {
                self.skip_past('>')?;
            } else {
                // Flags: `(?i)` holds to the end of the enclosing group, `(?i:...)` is a group.
                // Verbose mode changes what whitespace and `#` mean: not understood.
                let mut negated = false;
                loop {
                    match self.bump()? {
                        ')' => return Some(Some(0)),
                        ':' => break,
                        '-' => negated = true,
                        'i' => self.case_insensitive = !negated,
                        's' => self.dot_matches_newline = !negated,
                        'x' => return None,
                        _ => {}
                    }
                }
            }
        }
        let len = self.alternation()?;
        (self.case_insensitive, self.dot_matches_newline) = outer;
        (self.bump()? == ')').then_some(len)
    }

    /// After a `\`, outside a class.
    fn escape(&mut self) -> Option<Option<usize>> {
        let c = self.bump()?;
        Some(Some(match c {
            'b' | 'B' => {
                if self.peek() == Some('{') {
                    self.skip_past('}')?;
                }
                0
            }
            'A' | 'z' | '<' | '>' => 0,
            _ => {
                let (width, newline) = self.escape_class(c)?;
                self.newline |= newline;
                width
            }
        }))
    }

    /// An escape that matches one character (after the `\`): its width in bytes, and whether it
    /// may match a line feed.
    fn escape_class(&mut self, c: char) -> Option<(usize, bool)> {
        Some(match c {
            'n' => (1, true),
            's' | 'W' | 'D' => (4, true),
            'S' | 'd' | 'w' => (4, false),
            'p' | 'P' => {
                if self.peek() == Some('{') {
                    self.skip_past('}')?;
                } else {
                    self.bump()?;
                }
                (4, true)
            }
            'x' | 'u' | 'U' => {
                let code = self.hex_escape(c)?;
                (char::from_u32(code).map_or(4, char::len_utf8), code == 0x0A)
            }
            c if c.is_ascii_alphabetic() => (self.ascii_width(), false), // \t \r \f \v \a
            c => (c.len_utf8(), false),                                  // \. \\ \- ...
        })
    }

    /// The code point of `\xHH`, `\x{...}`, `\uHHHH`, `\UHHHHHHHH` (after the letter).
    fn hex_escape(&mut self, letter: char) -> Option<u32> {
        let mut digits = String::new();
        if self.peek() == Some('{') {
            self.pos += 1;
            loop {
                match self.bump()? {
                    '}' => break,
                    d => digits.push(d),
                }
            }
        } else {
            let count = match letter {
                'x' => 2,
                'u' => 4,
                _ => 8,
            };
            for _ in 0..count {
                digits.push(self.bump()?);
            }
        }
        u32::from_str_radix(&digits, 16).ok()
    }

    /// After a `[`: the width of one character of the class. Nested classes and set operations
    /// are taken as possibly matching a line feed.
    fn class(&mut self) -> Option<usize> {
        let negated = self.peek() == Some('^');
        if negated {
            self.pos += 1;
        }
        let mut width = if negated { 4 } else { self.ascii_width() };
        let mut newline = false;
        let mut complex = false;
        let mut first = true;
        loop {
            let c = self.bump()?;
            let value: Option<u32> = match c {
                ']' if !first => break,
                '\\' => match self.bump()? {
                    e @ ('x' | 'u' | 'U') => {
                        let code = self.hex_escape(e)?;
                        if code > 0x7F {
                            width = 4;
                        }
                        Some(code)
                    }
                    e => {
                        let (w, nl) = self.escape_class(e)?;
                        newline |= nl;
                        if w == 4 {
                            width = 4;
                        }
                        // A range end point: the code point of a character escape.
                        match e {
                            'n' => Some(0x0A),
                            't' => Some(0x09),
                            'r' => Some(0x0D),
                            e if !e.is_ascii_alphanumeric() => Some(e as u32),
                            _ => None,
                        }
                    }
                },
                '[' if self.peek() == Some(':') => {
                    let start = self.pos;
                    self.skip_past(']')?;
                    let name: String = self.chars[start..self.pos].iter().collect();
                    if matches!(name.as_str(), ":space:]" | ":cntrl:]" | ":ascii:]")
                        || name.starts_with(":^")
                    {
                        newline = true;
                    }
                    None
                }
                '[' => {
                    // A nested class: find its end, and give up on being exact.
                    complex = true;
                    let mut depth = 1;
                    while depth > 0 {
                        match self.bump()? {
                            '\\' => {
                                self.bump()?;
                            }
                            '[' => depth += 1,
                            ']' => depth -= 1,
                            _ => {}
                        }
                    }
                    None
                }
                '&' | '~' | '-' if self.peek() == Some(c) => {
                    // `&&`, `~~`, `--`: set operations
                    self.pos += 1;
                    complex = true;
                    None
                }
                c => {
                    if !c.is_ascii() {
                        width = 4;
                    }
                    Some(c as u32)
                }
            };
            first = false;
            // A range `a-z` (a `-` before `]` is a literal).
            if let Some(low) = value {
                newline |= low == 0x0A;
                if self.peek() == Some('-')
                    && self.chars.get(self.pos + 1).is_some_and(|&n| n != ']')
                {
                    self.pos += 1;
                    let high = match self.bump()? {
                        '\\' => {
                            let e = self.bump()?;
                            match e {
                                'x' | 'u' | 'U' => self.hex_escape(e)?,
                                'n' => 0x0A,
                                e => e as u32,
                            }
                        }
                        h => h as u32,
                    };
                    if high > 0x7F {
                        width = 4;
                    }
                    newline |= low <= 0x0A && 0x0A <= high;
                }
            }
        }
        self.newline |= complex || newline != negated;
        Some(width)
    }

    fn repetition(&mut self, atom: Option<usize>) -> Option<Option<usize>> {
        let mut len = atom;
        loop {
            match self.peek() {
                Some('*') | Some('+') => {
                    self.pos += 1;
                    if len != Some(0) {
                        len = None;
                    }
                }
                Some('?') => self.pos += 1,
                Some('{') => {
                    self.pos += 1;
                    let mut text = String::new();
                    loop {
                        match self.bump()? {
                            '}' => break,
                            c => text.push(c),
                        }
                    }
                    let max = match text.split_once(',') {
                        None => Some(text.trim().parse::<usize>().ok()?),
                        Some((_, max)) if max.trim().is_empty() => None,
                        Some((_, max)) => Some(max.trim().parse::<usize>().ok()?),
                    };
                    len = match (len, max) {
                        (Some(0), _) => Some(0),
                        (Some(l), Some(m)) => l.checked_mul(m),
                        _ => None,
                    };
                }
                _ => return Some(len),
            }
            if self.peek() == Some('?') {
                self.pos += 1; // lazy
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user_rule(name: &str, pattern: &str, keywords: &[&str]) -> RuleConfig {
        RuleConfig {
            name: name.to_string(),
            pattern: pattern.to_string(),
            keywords: keywords.iter().map(|k| k.to_string()).collect(),
            secret_group: None,
            examples: Vec::new(),
            counter_examples: Vec::new(),
        }
    }

    fn only(rules: Vec<RuleConfig>, allow: &[&str]) -> Redactor {
        Redactor::new(&RedactConfig {
            rules,
            allow: allow.iter().map(|a| a.to_string()).collect(),
            builtin: false,
        })
        .unwrap()
    }

    #[test]
    fn builtin_examples_are_redacted_and_counter_examples_are_not() {
        let redactor = Redactor::builtin();
        let mut failures = Vec::new();
        for rule in Redactor::builtin_rules() {
            if rule.examples.is_empty() {
                failures.push(format!("{}: has no examples", rule.name));
            }
            for example in &rule.examples {
                let out = redactor.redact_str(example);
                if !out.contains(MARKER_PREFIX) {
                    failures.push(format!("{}: example not redacted: {example:?}", rule.name));
                } else if !out.contains(&format!("{MARKER_PREFIX}{}]", rule.name)) {
                    // Another rule took it: fine, but say which in a failure only if this rule
                    // does not match the example at all.
                    let alone = Redactor::new(&RedactConfig {
                        rules: vec![rule.clone()],
                        allow: Vec::new(),
                        builtin: false,
                    })
                    .unwrap();
                    if alone.redact_str(example) == example.as_str() {
                        failures.push(format!(
                            "{}: example is redacted only by another rule: {example:?} -> {out:?}",
                            rule.name
                        ));
                    }
                }
            }
            for counter in &rule.counter_examples {
                let out = redactor.redact_str(counter);
                if out != counter.as_str() {
                    failures.push(format!(
                        "{}: counter-example changed: {counter:?} -> {out:?}",
                        rule.name
                    ));
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} failures:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn builtin_rules_have_keywords_and_unique_kebab_case_names() {
        let rules = Redactor::builtin_rules();
        assert!(rules.len() >= 30, "only {} built-in rules", rules.len());
        let mut names = std::collections::HashSet::new();
        for rule in &rules {
            assert!(!rule.keywords.is_empty(), "{} has no keywords", rule.name);
            for k in &rule.keywords {
                assert_eq!(
                    k,
                    &k.to_lowercase(),
                    "{}: keyword {k:?} is not lowercase",
                    rule.name
                );
            }
            assert!(
                rule.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{} is not kebab-case",
                rule.name
            );
            assert!(
                names.insert(rule.name.clone()),
                "{} is defined twice",
                rule.name
            );
        }
        assert_eq!(Redactor::builtin().rule_names().count(), rules.len());
    }

    /// What redaction gives without keywords and windows: every rule over the whole text.
    struct Reference {
        rules: Vec<(String, Regex, usize)>,
        allow: Vec<Regex>,
    }

    impl Reference {
        fn new() -> Self {
            let file = parse_builtin().unwrap();
            Reference {
                rules: file
                    .rules
                    .iter()
                    .map(|r| {
                        let regex = Regex::new(&r.pattern).unwrap();
                        (r.name.clone(), regex, r.secret_group.unwrap_or(0))
                    })
                    .collect(),
                allow: file
                    .allow
                    .iter()
                    .map(|p| Regex::new(&format!(r"\A(?:{p})\z")).unwrap())
                    .collect(),
            }
        }

        fn redact(&self, text: &str) -> String {
            let marker = Regex::new(r"\[REDACTED:[A-Za-z0-9_.-]+\]").unwrap();
            let markers: Vec<(usize, usize)> = marker
                .find_iter(text)
                .map(|m| (m.start(), m.end()))
                .collect();
            let mut spans = Vec::new();
            for (index, (_, regex, group)) in self.rules.iter().enumerate() {
                for caps in regex.captures_iter(text) {
                    let Some(m) = caps.get(*group) else { continue };
                    let in_marker = markers.iter().any(|&(s, e)| s < m.end() && m.start() < e);
                    if m.is_empty()
                        || in_marker
                        || self.allow.iter().any(|a| a.is_match(m.as_str()))
                    {
                        continue;
                    }
                    spans.push(Span {
                        start: m.start(),
                        end: m.end(),
                        rule: index,
                    });
                }
            }
            let mut out = String::new();
            let mut at = 0;
            for span in merge_spans(spans) {
                out.push_str(&text[at..span.start]);
                out.push_str(&format!("[REDACTED:{}]", self.rules[span.rule].0));
                at = span.end;
            }
            out.push_str(&text[at..]);
            out
        }
    }

    /// Every example match contains a keyword and fits the computed bound; alone and inside
    /// long unrelated text, on many lines or one long line, the windowed search finds what
    /// running every rule over the whole text finds.
    #[test]
    fn windows_find_what_the_whole_text_search_finds() {
        let fillers = [
            "x = compute(values[3], key=len)  # ordinary code\n".repeat(100),
            "{\"k\": [1, 2], \"v\": \"abc def\"}, ".repeat(100),
        ];
        let reference = Reference::new();
        let mut failures = Vec::new();
        let mut all = String::new();
        for rule in Redactor::builtin_rules() {
            let regex = Regex::new(&rule.pattern).unwrap();
            let bound = shape(&rule.pattern).max_len;
            for example in &rule.examples {
                for m in regex.find_iter(example) {
                    let lower = m.as_str().to_ascii_lowercase();
                    if !rule.keywords.iter().any(|k| lower.contains(k.as_str())) {
                        failures.push(format!(
                            "{}: match {:?} has no keyword",
                            rule.name,
                            m.as_str()
                        ));
                    }
                    if bound.is_some_and(|b| m.len() > b) {
                        failures.push(format!("{}: match longer than bound {bound:?}", rule.name));
                    }
                }
                // Alone, most examples are short texts, searched by the small-text automaton.
                if Redactor::builtin().redact_str(example) != reference.redact(example) {
                    failures.push(format!("{}: differs alone: {example:?}", rule.name));
                }
                for filler in &fillers {
                    for text in [
                        format!("{filler}{example}\n{filler}"),
                        format!("{filler}{example} {filler}"),
                    ] {
                        if Redactor::builtin().redact_str(&text) != reference.redact(&text) {
                            failures.push(format!(
                                "{}: differs inside long text: {example:?}",
                                rule.name
                            ));
                        }
                    }
                }
                all.push_str(example);
                // Examples joined on one line and on separate lines.
                all.push_str(if example.len().is_multiple_of(2) {
                    "\n"
                } else {
                    " "
                });
            }
        }
        assert_eq!(Redactor::builtin().redact_str(&all), reference.redact(&all));
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Texts made of pieces of secrets, keys, quotes and separators, often many keywords on
        /// one line (more than [`MAX_ANCHORED_STARTS`]): the anchored and windowed searches
        /// find what running every rule over the whole text finds.
        #[test]
        fn searches_find_what_the_whole_text_search_finds(
            pieces in proptest::collection::vec(0usize..PIECES.len(), 0..120),
            example in 0usize..1000,
        ) {
            let mut text: String = pieces.iter().map(|&p| PIECES[p]).collect();
            text.insert_str(floor_boundary(&text, text.len() / 2), &EXAMPLES[example % EXAMPLES.len()]);
            proptest::prop_assert_eq!(
                Redactor::builtin().redact_str(&text),
                REFERENCE.redact(&text)
            );
        }
    }

    /// Every example, placed across the boundary of two chunks at every offset, and among
    /// filler of mixed case, is found as in the whole text.
    #[test]
    fn secrets_across_chunk_boundaries_are_found() {
        let filler: String = "Lorem ipsum dolor SIT amet,\n".repeat(CHUNK_BYTES / 28 + 1);
        let filler = &filler[..CHUNK_BYTES - 40];
        for example in EXAMPLES.iter() {
            for shift in 0..example.len().min(80) {
                let text = format!("{filler}{}{example} tail", "x".repeat(shift));
                assert_eq!(
                    Redactor::builtin().redact_str(&text),
                    REFERENCE.redact(&text),
                    "{example:?} at {}",
                    filler.len() + shift
                );
            }
        }
    }

    static REFERENCE: LazyLock<Reference> = LazyLock::new(Reference::new);

    /// Every built-in rule's examples.
    static EXAMPLES: LazyLock<Vec<String>> = LazyLock::new(|| {
        Redactor::builtin_rules()
            .into_iter()
            .flat_map(|r| r.examples)
            .collect()
    });

    const PIECES: &[&str] = &[
        "token",
        "Token",
        "TOKEN",
        "password",
        "_pass",
        "passwd",
        "secret",
        "secret_key",
        "api_key",
        "ghp_",
        "xoxb-",
        "sk-",
        "sk-ant-",
        "eyJ",
        "://",
        "user:",
        "@",
        "=",
        " = ",
        ": ",
        "=>",
        ":=",
        "\"",
        "'",
        "\\\"",
        " ",
        "\n",
        "\t",
        "x",
        "abcdefgh",
        "0123456789abcdef",
        "AbCdEfGh12345678",
        "-",
        "_",
        ".",
        "/",
        "é",
        "ſ",
        "K",
        "[REDACTED:jwt]",
    ];

    /// The rules whose every match starts with a keyword run anchored; the others search the
    /// windows around their keywords.
    #[test]
    fn rules_that_start_with_a_keyword_run_anchored() {
        let anchored = |name: &str| {
            let rules = &Redactor::builtin().rules;
            rules.iter().find(|r| r.name == name).expect(name).anchored
        };
        for name in [
            "github-pat",
            "slack-bot-token",
            "jwt",
            "url-password",
            "password-assignment",
            "secret-assignment",
            "token-assignment",
        ] {
            assert!(anchored(name), "{name} should run anchored");
        }
        // The match starts before the keyword; the match may span lines without bound.
        for name in ["stripe-secret-key", "url-query-secret", "private-key"] {
            assert!(!anchored(name), "{name} should not run anchored");
        }
        let keywords = |k: &[&str]| k.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert!(starts_with_keyword(r"(?i-u:token)=", &keywords(&["token"])));
        assert!(starts_with_keyword(
            r"(?-u:\b)(?:ghp|gho)_",
            &keywords(&["ghp_", "gho_"])
        ));
        // Unicode case folding: `ſ` (long s) matches `s`, and no keyword finds it.
        assert!(!starts_with_keyword(
            r"(?i:secret)=",
            &keywords(&["secret"])
        ));
        assert!(!starts_with_keyword(r"x?token", &keywords(&["token"])));
        assert!(!starts_with_keyword(r"tok", &keywords(&["token"])));
        assert!(!starts_with_keyword(r"[a-z]+token", &keywords(&["token"])));
    }

    fn max_len(pattern: &str) -> Option<usize> {
        shape(pattern).max_len
    }

    #[test]
    fn keywords_are_bucketed_by_shared_fingerprints_and_every_one_is_kept() {
        // Keywords alike in their first bytes cost less together than unlike ones.
        assert!(bucket_cost(&["ghp_", "gho_"]) < bucket_cost(&["ghp_", "xai-"]));
        assert!(bucket_cost(&["passw"]) < bucket_cost(&["passw", "token"]));
        // A fingerprint avoids runs of one byte, which ordinary text is full of.
        assert_eq!(fingerprint_at(b"-----begin"), 4);
        assert_eq!(fingerprint_at(b"xox"), 0);

        let keywords = [
            "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "passw", "token", "secret", "xai-", "pmak-",
            "glpat-", "glrt-", "akia", "asia", "aiza", "bearer", "curl", "dapi",
        ];
        let chosen = buckets(&keywords, 8);
        assert_eq!(chosen.len(), 8);
        assert!(chosen.iter().all(|b| b.len() <= 3), "{chosen:?}");
        let mut all: Vec<&str> = chosen.concat();
        all.sort_unstable();
        let mut expected = keywords.to_vec();
        expected.sort_unstable();
        assert_eq!(all, expected);

        // Teddy puts pattern i in bucket 7 - i % 8: each bucket's keywords 8 apart.
        let order = teddy_order(&chosen);
        assert_eq!(order.len(), keywords.len());
        for bucket in &chosen {
            let places: Vec<usize> = bucket
                .iter()
                .map(|k| order.iter().position(|o| o == k).unwrap())
                .collect();
            assert!(places.iter().all(|p| p % 8 == places[0] % 8), "{places:?}");
        }
    }

    #[test]
    fn shape_bounds_the_match_length() {
        assert_eq!(max_len("abc"), Some(3));
        assert_eq!(max_len(r"\bghp_[A-Za-z0-9]{36}\b"), Some(40));
        assert_eq!(max_len(r"a|bcd|ef"), Some(3));
        assert_eq!(max_len(r"(?:ab){2,5}c?"), Some(11));
        assert_eq!(max_len(r"[^x]{2}"), Some(8));
        assert_eq!(max_len(r"(?i)ab"), Some(6));
        assert_eq!(max_len(r"(?-i:ab)"), Some(2));
        assert_eq!(max_len(r"(?i:ab)cd"), Some(8));
        assert_eq!(max_len(r"a(?i)b|c"), Some(4));
        assert_eq!(max_len(r"(?:x(?i)y)z[a-z]"), Some(6));
        assert_eq!(max_len(r#"(?i)[[:graph:]--["'\\]]{2}"#), Some(6));
        assert_eq!(max_len(r"\x60\u{00e9}"), Some(3));
        assert_eq!(max_len(r"[\]a-z]{3}"), Some(3));
        assert_eq!(max_len(r"[a-é]"), Some(4));
        assert_eq!(max_len(r"(?P<key>[[:alpha:]]{2})(?<v>b)"), Some(3));
        assert_eq!(max_len(r"(?-u:\b)x(?-u:\b)"), Some(1));
        assert_eq!(max_len(r"a+"), None);
        assert_eq!(max_len(r"a{2,}"), None);
        assert_eq!(max_len(r"(?s:.)*?"), None);
        assert_eq!(max_len(r"\b*a"), Some(1));
        assert_eq!(max_len(r"(?x) a # comment"), None);
    }

    #[test]
    fn shape_knows_single_line_patterns() {
        let multiline = |p: &str| shape(p).multiline;
        for p in [
            r"abc",
            r#"[^\s'"]{3}"#,
            r"[^\r\n]*",
            r"(?m)^[ \t]{0,3}k:\S+$",
            r".+",
            r"[a-z\-]",
            r"\x41[\x00-\x09]",
            r"[[:alpha:][:blank:]]",
        ] {
            assert!(!multiline(p), "{p} cannot match a line feed");
        }
        for p in [
            r"a\nb",
            "a\nb",
            r"\s",
            r"[\s]",
            r#"[^"]"#,
            r"(?s:.)",
            r"(?s).",
            r"\D",
            r"[\x00-\x7F]",
            r"[\x0a]",
            r"\x{A}",
            r"[[:space:]]",
            r"[[a-z]--[b]]",
            r"\pZ",
        ] {
            assert!(multiline(p), "{p} can match a line feed");
        }
    }

    #[test]
    fn user_rules_and_allow_list() {
        let mut rule = user_rule("ticket-key", r"ticket=(TK-[0-9]{6})", &["ticket="]);
        rule.secret_group = Some(1);
        let redactor = Redactor::new(&RedactConfig {
            rules: vec![rule],
            allow: vec!["TK-000000".to_string()],
            builtin: true,
        })
        .unwrap();
        assert_eq!(
            redactor.redact_str("see ticket=TK-123456 now"),
            "see ticket=[REDACTED:ticket-key] now"
        );
        assert_eq!(redactor.redact_str("ticket=TK-000000"), "ticket=TK-000000");
        // Built-ins are still there.
        assert!(
            redactor
                .redact_str("ghp_0123456789abcdefABCDEF0123456789abcd")
                .contains("[REDACTED:")
        );
        assert!(redactor.rule_names().any(|n| n == "ticket-key"));

        // An allow pattern matching the whole secret keeps it.
        let allow_key = "ghp_0123456789abcdefABCDEF0123456789abcd";
        let allowing = Redactor::new(&RedactConfig {
            allow: vec![allow_key.to_string()],
            ..RedactConfig::default()
        })
        .unwrap();
        assert_eq!(allowing.redact_str(allow_key), allow_key);
        // ... but not a pattern matching only a part of it.
        let partial = Redactor::new(&RedactConfig {
            allow: vec!["ghp_".to_string()],
            ..RedactConfig::default()
        })
        .unwrap();
        assert_ne!(partial.redact_str(allow_key), allow_key);
    }

    #[test]
    fn non_ascii_keywords_and_overlapping_keywords() {
        let redactor = only(
            vec![
                user_rule("cle-api", r"(?i:clé)=(\d{6})", &["clé="]),
                user_rule("e-code", r"é=[0-9]{6}", &["é="]),
            ],
            &[],
        );
        assert_eq!(
            redactor.redact_str("x CLÉ=123456 y"),
            "x CLÉ=123456 y",
            "ASCII lowercasing leaves É alone, so the keyword clé= does not match"
        );
        assert_eq!(
            redactor.redact_str("x clé=123456 y"),
            "x [REDACTED:cle-api] y"
        );

        // `_pass` is looked for by its piece `_pas`, `passw` by `assw`: in `_password` a hit of
        // the first hides the second, which is found all the same, in a short text (the
        // automaton) and in a long one (Teddy).
        assert_eq!(&b"_pass"[fingerprint_at(b"_pass")..][..4], b"_pas");
        assert_eq!(&b"passw"[fingerprint_at(b"passw")..][..4], b"assw");
        let redactor = only(
            vec![
                user_rule("pass-eq", r"_pass\w*=\S+", &["_pass"]),
                user_rule("passw-colon", r"passw\w*:\S+", &["passw"]),
            ],
            &[],
        );
        let padding = " ".repeat(SMALL_TEXT_BYTES);
        for text in [
            "db_password:hunter2".to_string(),
            format!("db_password:hunter2{padding}"),
        ] {
            assert_eq!(
                redactor.redact_str(&text),
                text.replace("password:hunter2", "[REDACTED:passw-colon]")
            );
        }
    }

    #[test]
    fn user_rule_without_keywords_always_runs() {
        let redactor = only(vec![user_rule("digits", r"\b[0-9]{12}\b", &[])], &[]);
        assert_eq!(
            redactor.redact_str("id 123456789012."),
            "id [REDACTED:digits]."
        );
    }

    #[test]
    fn builtin_false_has_no_builtin_rules() {
        let redactor = only(vec![], &[]);
        assert_eq!(redactor.rule_names().count(), 0);
        let text = "ghp_0123456789abcdefABCDEF0123456789abcd";
        assert_eq!(redactor.redact_str(text), text);
    }

    #[test]
    fn config_from_toml() {
        let config: RedactConfig = toml::from_str(
            r#"
            allow = ["sk_test_[0-9a-zA-Z]+"]
            [[rules]]
            name = "internal-token"
            pattern = 'itk_[a-z0-9]{16}'
            keywords = ["itk_"]
            "#,
        )
        .unwrap();
        assert!(config.builtin);
        assert!(RedactConfig::default().builtin);
        let redactor = Redactor::new(&config).unwrap();
        assert_eq!(
            redactor.redact_str("t=itk_0123456789abcdef"),
            "t=[REDACTED:internal-token]"
        );
        let unknown = toml::from_str::<RedactConfig>("rulez = []");
        assert!(unknown.is_err());
    }

    #[test]
    fn errors_name_the_rule_and_say_what_to_do() {
        let bad = Redactor::new(&RedactConfig {
            rules: vec![user_rule("broken-rule", r"(unclosed", &["x"])],
            ..RedactConfig::default()
        });
        let message = bad.err().unwrap().to_string();
        assert!(message.contains("broken-rule"), "{message}");
        assert!(message.contains("unclosed"), "{message}");

        let lookahead = Redactor::new(&RedactConfig {
            rules: vec![user_rule("look-ahead", r"a(?=b)", &["a"])],
            ..RedactConfig::default()
        });
        assert!(
            matches!(lookahead, Err(RedactError::BadPattern { ref rule, .. }) if rule == "look-ahead")
        );

        let mut group = user_rule("group-rule", r"k=(\w+)", &["k="]);
        group.secret_group = Some(2);
        let message = Redactor::new(&RedactConfig {
            rules: vec![group],
            ..RedactConfig::default()
        })
        .err()
        .unwrap()
        .to_string();
        assert!(
            message.contains("group-rule") && message.contains("only 1"),
            "{message}"
        );

        let empty = Redactor::new(&RedactConfig {
            rules: vec![user_rule("", "x", &["x"])],
            ..RedactConfig::default()
        });
        assert!(matches!(empty, Err(RedactError::EmptyName { .. })));

        let bad_name = Redactor::new(&RedactConfig {
            rules: vec![user_rule("has space]", "x", &["x"])],
            ..RedactConfig::default()
        });
        assert!(matches!(bad_name, Err(RedactError::BadName { .. })));

        let duplicate = Redactor::new(&RedactConfig {
            rules: vec![user_rule("github-pat", "x", &["x"])],
            ..RedactConfig::default()
        });
        assert!(matches!(duplicate, Err(RedactError::DuplicateName { .. })));

        let empty_keyword = Redactor::new(&RedactConfig {
            rules: vec![user_rule("kw", "x", &[""])],
            ..RedactConfig::default()
        });
        assert!(matches!(
            empty_keyword,
            Err(RedactError::EmptyKeyword { .. })
        ));

        let bad_allow = Redactor::new(&RedactConfig {
            allow: vec!["[".to_string()],
            ..RedactConfig::default()
        });
        assert!(matches!(
            bad_allow,
            Err(RedactError::BadAllowPattern { index: 0, .. })
        ));
    }

    #[test]
    fn nested_json_values() {
        let mut value = json!({
            "event": "run",
            "env": {"GITHUB_TOKEN": "ghp_0123456789abcdefABCDEF0123456789abcd", "HOME": "/root"},
            "lines": ["ok", {"deep": ["postgres://app:s3cretPass@db:5432/evals"]}],
            "ghp_0123456789abcdefABCDEF0123456789abcd": 3,
            "n": 1, "b": true, "x": null
        });
        assert!(Redactor::builtin().redact_value(&mut value));
        assert_eq!(value["env"]["GITHUB_TOKEN"], "[REDACTED:github-pat]");
        assert_eq!(value["env"]["HOME"], "/root");
        assert_eq!(
            value["lines"][1]["deep"][0],
            "postgres://app:[REDACTED:url-password]@db:5432/evals"
        );
        // Keys are left alone.
        assert_eq!(value["ghp_0123456789abcdefABCDEF0123456789abcd"], 3);
        assert!(!Redactor::builtin().redact_value(&mut value));
        let mut plain = json!({"a": ["b", {"c": "d"}], "e": 1});
        assert!(!Redactor::builtin().redact_value(&mut plain));
    }

    #[test]
    fn multibyte_text_around_secrets() {
        let text = "clé→ghp_0123456789abcdefABCDEF0123456789abcd←🔑 日本語 token=\"ghp_0123456789abcdefABCDEF0123456789abcd\"é";
        let out = Redactor::builtin().redact_str(text);
        assert_eq!(
            out,
            "clé→[REDACTED:github-pat]←🔑 日本語 token=\"[REDACTED:github-pat]\"é"
        );
        // Secrets right next to multibyte characters in a long text (windows cut inside
        // characters).
        let long = format!(
            "{}AKIAIOSFODNN7EXAMPLE{}",
            "é".repeat(300),
            "日".repeat(300)
        );
        let out = Redactor::builtin().redact_str(&long);
        assert_eq!(
            out,
            format!(
                "{}[REDACTED:aws-access-key-id]{}",
                "é".repeat(300),
                "日".repeat(300)
            )
        );
    }

    #[test]
    fn redacting_twice_is_redacting_once() {
        let redactor = Redactor::builtin();
        let mut failures = Vec::new();
        let mut all = String::new();
        for rule in Redactor::builtin_rules() {
            for example in rule.examples {
                let once = redactor.redact_str(&example).into_owned();
                let twice = redactor.redact_str(&once).into_owned();
                if once != twice {
                    failures.push(format!("{}: {once:?} -> {twice:?}", rule.name));
                }
                all.push_str(&example);
                all.push('\n');
            }
        }
        let once = redactor.redact_str(&all).into_owned();
        assert_eq!(redactor.redact_str(&once), once);
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn markers_are_never_redacted() {
        for text in [
            "[REDACTED:github-pat]",
            "password = \"[REDACTED:password-assignment]\"",
            "DB_PASSWORD=[REDACTED:env-secret]",
            "token: [REDACTED:x]",
            "postgres://u:[REDACTED:url-password]@h/db",
            "Authorization: Bearer [REDACTED:bearer-token]",
        ] {
            assert_eq!(Redactor::builtin().redact_str(text), text);
        }
    }

    #[test]
    fn overlapping_matches_become_one_replacement() {
        let redactor = only(
            vec![
                user_rule("first", r"abc[0-9]{4}", &["abc"]),
                user_rule("second", r"[0-9]{4}xyz", &["xyz"]),
                user_rule("inner", r"c12", &["c12"]),
            ],
            &[],
        );
        assert_eq!(redactor.redact_str("<abc1234xyz>"), "<[REDACTED:first]>");
        assert_eq!(
            redactor.redact_str("<abc1234 9999xyz>"),
            "<[REDACTED:first] [REDACTED:second]>"
        );
    }

    #[test]
    fn ordinary_data_is_left_alone() {
        let texts = [
            "commit 3f786850e387550fdab836ed7e6dc881de23001b",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "id=123e4567-e89b-12d3-a456-426614174000",
            "version 1.2.3-rc.4+build.5, python 3.11.7",
            "https://example.com/a?b=c",
            "postgres://localhost/db",
            "mail me at user@host.example.com",
            "password = os.environ[\"DB_PASSWORD\"]",
            "password = getpass()",
            "password: ${DB_PASSWORD}",
            "api_key = None",
            "token = request.headers.get(\"X-Token\")",
            "password=<your-password>",
            "password = self.password",
            "token = tokens[i]",
            "secret_key = settings.SECRET_KEY",
            "def check_password(password):",
            "VeryLongIdentifierNameForAnOrdinaryClassInTheCodebaseFactoryBean",
        ];
        for text in texts {
            assert_eq!(Redactor::builtin().redact_str(text), text);
        }
        // 200 chars of base64 image data.
        let mut blob = String::from("data:image/png;base64,");
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut x: u32 = 12345;
        for _ in 0..200 {
            x = x.wrapping_mul(1103515245).wrapping_add(12345);
            blob.push(alphabet[(x >> 16) as usize % 64] as char);
        }
        assert_eq!(Redactor::builtin().redact_str(&blob), blob);
    }

    #[test]
    fn redact_string_reports_changes() {
        let mut text = String::from("nothing here");
        assert!(!Redactor::builtin().redact_string(&mut text));
        let mut text = String::from("key AKIAIOSFODNN7EXAMPLE");
        assert!(Redactor::builtin().redact_string(&mut text));
        assert_eq!(text, "key [REDACTED:aws-access-key-id]");
    }

    #[test]
    fn redactor_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Redactor>();
    }
}
