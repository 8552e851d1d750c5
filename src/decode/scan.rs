//! The fast path of decoding: a line that is one JSON object without control characters is
//! read here, its top-level strings unescaped with SIMD searches (`memchr`) straight into their
//! final `String`, and every other value (numbers, nested objects) handed to serde_json. Returns
//! `None` for anything it is not sure of; the caller then parses the line with serde_json alone,
//! which gives the same result or the exact error.

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
    (p.pos == line.len()).then_some(raw)
}

struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
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
        let mut specials = memchr::memchr2_iter(b'"', b'\\', &bytes[start..]);
        let first = start + specials.next()?;
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
            // Skip the quote or backslash of the escape itself.
            at = loop {
                let i = start + specials.next()?;
                if i >= literal {
                    break i;
                }
            };
        }
        if out.capacity() - out.len() > 4096 {
            out.shrink_to_fit();
        }
        // The one UTF-8 check of the string's text (escapes give valid characters).
        Some(Cow::Owned(String::from_utf8(out).ok()?))
    }

    /// Writes the character of the escape after a backslash at `at - 1`; returns how many
    /// bytes follow the backslash.
    fn escape(&self, at: usize, out: &mut Vec<u8>) -> Option<usize> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn string_of(json: &str) -> Option<String> {
        let mut p = Scanner {
            bytes: json.as_bytes(),
            pos: 1,
        };
        let s = p.string()?.into_owned();
        (p.pos == json.len()).then_some(s)
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
