//! The fast path of decoding: a line that is one JSON object without control characters is
//! read here, its top-level strings unescaped straight into their final `String` (escapes found
//! by memchr's vector search, or eight bytes at a time where they are close), and every other
//! value (numbers, nested objects) handed to serde_json. Returns `None` for anything it is not
//! sure of; the caller then parses the line with serde_json alone, which gives the same result
//! or the exact error.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{Key, RawEvent, Time, TypeName, json_kind};
use crate::event::EventType;

/// The line's object sorted into slots, or `None` to take the slow path.
pub(super) fn parse(line: &[u8]) -> Option<RawEvent> {
    // Control characters may only be whitespace between tokens: lines with any (tabs,
    // pretty-printed JSON) go the slow way, so that strings need no check of their own.
    if line.iter().fold(false, |any, &b| any | (b < 0x20)) {
        return None;
    }
    let mut p = Scanner {
        bytes: line,
        pos: 0,
        nul: false,
    };
    let mut raw = RawEvent::empty();
    p.spaces();
    p.expect(b'{')?;
    p.spaces();
    if p.peek()? == b'}' {
        p.pos += 1;
    } else {
        loop {
            p.expect(b'"')?;
            let key = p.string()?;
            p.spaces();
            p.expect(b':')?;
            p.spaces();
            // A repeated key keeps its last value, as in serde_json's own objects.
            match Key::of(&key) {
                Key::Type => raw.type_name = Some(p.type_name()?),
                Key::EventId => raw.event_id = Some(p.value()?),
                Key::Timestamp => raw.timestamp = Some(p.time()?),
                Key::TenantId => raw.tenant_id = Some(p.value()?),
                Key::Field(f) => raw.slots[f as usize] = Some(p.value()?),
                Key::Other(name) => {
                    let value = p.value()?;
                    raw.extra.insert(name, value);
                }
            }
            p.spaces();
            match p.next()? {
                b',' => p.spaces(),
                b'}' => break,
                _ => return None,
            }
        }
    }
    p.spaces();
    raw.may_hold_nul = p.nul;
    (p.pos == line.len()).then_some(raw)
}

struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Whether a string read so far may hold U+0000 (see [`crate::event::Event::may_hold_nul`]).
    nul: bool,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    /// Skips spaces (the only whitespace a line on the fast path can have).
    fn spaces(&mut self) {
        while self.bytes.get(self.pos) == Some(&b' ') {
            self.pos += 1;
        }
    }

    /// Any JSON value: strings here, the rest by serde_json.
    fn value(&mut self) -> Option<Value> {
        if self.peek()? == b'"' {
            self.pos += 1;
            return Some(Value::String(self.string()?.into_owned()));
        }
        let mut values =
            serde_json::Deserializer::from_slice(&self.bytes[self.pos..]).into_iter::<Value>();
        let value = values.next()?.ok()?;
        let text = &self.bytes[self.pos..self.pos + values.byte_offset()];
        self.nul |= memchr::memmem::find(text, b"\\u0000").is_some();
        self.pos += values.byte_offset();
        Some(value)
    }

    /// The value of `type`, as [`TypeName`]'s `Deserialize` reads it.
    fn type_name(&mut self) -> Option<TypeName> {
        if self.peek()? == b'"' {
            self.pos += 1;
            let name = self.string()?;
            return Some(match EventType::parse(&name) {
                Some(t) => TypeName::Known(t),
                None => TypeName::Unknown(name.into_owned()),
            });
        }
        Some(match self.value()? {
            Value::Null => TypeName::Null,
            other => TypeName::Other(json_kind(&other)),
        })
    }

    /// The value of `timestamp`, as [`Time`]'s `Deserialize` reads it.
    fn time(&mut self) -> Option<Time> {
        if self.peek()? == b'"' {
            self.pos += 1;
            let s = self.string()?;
            return Some(match DateTime::parse_from_rfc3339(&s) {
                Ok(t) => Time::Parsed(t.with_timezone(&Utc)),
                Err(_) => Time::Other(Value::String(s.into_owned())),
            });
        }
        Some(match self.value()? {
            Value::Null => Time::Null,
            v @ Value::Number(_) => Time::Other(v),
            other => Time::Kind(json_kind(&other)),
        })
    }

    /// A string, after its opening quote: borrowed when it has no escapes.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        let start = self.pos;
        let bytes = self.bytes;
        let first = start + memchr::memchr2(b'"', b'\\', &bytes[start..])?;
        if bytes[first] == b'"' {
            self.pos = first + 1;
            return Some(Cow::Borrowed(
                std::str::from_utf8(&bytes[start..first]).ok()?,
            ));
        }
        // Unescaping never makes a string longer: the rest of the line is enough room. What
        // is left over is given back at the end.
        let mut out = Vec::with_capacity(bytes.len() - start);
        let mut literal = start;
        let mut at = first;
        loop {
            out.extend_from_slice(&bytes[literal..at]);
            if bytes[at] == b'"' {
                self.pos = at + 1;
                break;
            }
            literal = at + 1 + self.escape(at + 1, &mut out)?;
            at = next_special(bytes, literal)?;
        }
        if out.capacity() - out.len() > 4096 {
            out.shrink_to_fit();
        }
        // The one UTF-8 check of the string's text (escapes give valid characters).
        Some(Cow::Owned(String::from_utf8(out).ok()?))
    }

    /// Writes the character of the escape after a backslash at `at - 1`; returns how many
    /// bytes follow the backslash.
    fn escape(&mut self, at: usize, out: &mut Vec<u8>) -> Option<usize> {
        let simple = match *self.bytes.get(at)? {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let high = self.hex4(at + 1)?;
                let (code, len) = match high {
                    0xD800..=0xDBFF => {
                        // A surrogate pair; a lone surrogate is an error, left to serde_json.
                        if self.bytes.get(at + 5..at + 7)? != b"\\u" {
                            return None;
                        }
                        let low = self.hex4(at + 7)?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return None;
                        }
                        (0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00), 11)
                    }
                    0xDC00..=0xDFFF => return None,
                    code => (code, 5),
                };
                self.nul |= code == 0;
                let c = char::from_u32(code)?;
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                return Some(len);
            }
            _ => return None,
        };
        out.push(simple);
        Some(1)
    }

    fn hex4(&self, at: usize) -> Option<u32> {
        let digits = self.bytes.get(at..at + 4)?;
        digits.iter().try_fold(0, |n, &d| {
            let v = (d as char).to_digit(16)?;
            Some(n << 4 | v)
        })
    }
}

/// Where the next `"` or `\\` at or after `from` is. Text with escapes has them close
/// together (a line of code or output ends in `\\n`), so the first 32 bytes are searched eight
/// at a time, which costs less than starting a vector search; then memchr2 takes over.
fn next_special(bytes: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // The high bit of every byte of `w` that is zero; false positives only above a true one.
    let zeros = |w: u64| w.wrapping_sub(ONES) & !w & HIGH;
    let near = bytes.len().min(from + 32);
    let mut at = from;
    while at + 8 <= near {
        let w = u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"));
        let found = zeros(w ^ (ONES * b'"' as u64)) | zeros(w ^ (ONES * b'\\' as u64));
        if found != 0 {
            return Some(at + found.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    memchr::memchr2(b'"', b'\\', &bytes[at..]).map(|i| at + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string_of(json: &str) -> Option<String> {
        let mut p = Scanner {
            bytes: json.as_bytes(),
            pos: 1,
            nul: false,
        };
        let s = p.string()?.into_owned();
        (p.pos == json.len()).then_some(s)
    }

    #[test]
    fn next_special_finds_the_first_quote_or_backslash() {
        let text = br#"abc\def"ghij\\klmnopqrstuvwxyz0123456789"abcdefghijklmnopqrstuvwxyz\"#;
        for from in 0..=text.len() {
            let expected = (from..text.len()).find(|&i| matches!(text[i], b'"' | b'\\'));
            assert_eq!(next_special(text, from), expected, "from {from}");
        }
        let plain = [b'x'; 100];
        assert_eq!(next_special(&plain, 0), None);
        for at in 0..100 {
            let mut with = plain;
            with[at] = b'"';
            assert_eq!(next_special(&with, 0), Some(at));
        }
    }

    #[test]
    fn escapes_at_every_distance_unescape_as_serde_json_does() {
        // Escapes near and far apart, on both sides of the eight-byte steps and of the 32
        // bytes searched before memchr2 takes over.
        for escape in [r#"\n"#, r#"\""#, r#"\\"#, r#"\u00e9"#] {
            for first in 0..40 {
                for gap in 0..80 {
                    let json = format!(
                        "\"{}{escape}{}{escape}tail\"",
                        "a".repeat(first),
                        "é".repeat(gap / 2) + &"b".repeat(gap % 2)
                    );
                    let expected: String = serde_json::from_str(&json).unwrap();
                    assert_eq!(
                        string_of(&json).as_deref(),
                        Some(expected.as_str()),
                        "{json}"
                    );
                }
            }
        }
    }

    #[test]
    fn strings_unescape_as_serde_json_does() {
        for json in [
            r#""""#,
            r#""plain text""#,
            r#""a\"b\\c\/d\b\f\n\r\t""#,
            r#""\u00e9\u00E9 \ud83d\ude00 é 日本""#,
            r#""\\\\\"""#,
            r#""ends with escape\n""#,
            r#""\u0000""#,
        ] {
            let expected: String = serde_json::from_str(json).unwrap();
            assert_eq!(
                string_of(json).as_deref(),
                Some(expected.as_str()),
                "{json}"
            );
        }
        for bad in [
            r#""\x""#,
            r#""\u12""#,
            r#""\ud83d""#,
            r#""\ud83dx""#,
            r#""\ude00""#,
            r#""\ud83d\u0041""#,
            r#""unterminated"#,
            r#""unterminated\"#,
        ] {
            assert_eq!(string_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn lines_it_is_not_sure_of_go_the_slow_way() {
        for line in [
            "{\"type\":\t\"QUEUE_METRICS\"}",
            r#"{"type":"QUEUE_METRICS"}}"#,
            r#"{"type":"QUEUE_METRICS",}"#,
            r#"{"type":"QUEUE_METRICS" "x":1}"#,
            r#"[1]"#,
            r#"{"a":tru}"#,
            r#"{"a":01}"#,
            r#"{"a":1"#,
            r#"{"a"}"#,
        ] {
            assert!(parse(line.as_bytes()).is_none(), "{line}");
        }
        assert!(parse(br#"  { "a" : [1, {"b": null}] , "type" : "X" }  "#).is_some());
        assert!(parse(b"{}").is_some());
    }
}
