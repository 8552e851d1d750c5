//! Framing: turns a byte stream into chunks of whole lines, bounded by `max_line_bytes`.
//! A line longer than the limit is discarded as it streams by and comes back as a
//! [`Frame::TooLong`] item (a dead letter), never as an error that ends the stream.

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;

/// How many bytes of a too-long line are kept for the dead letter queue.
pub const TOO_LONG_PREFIX_BYTES: usize = 4096;

/// What the framer yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// One or more whole lines. Each ends with `\n`, except a last line at end of input.
    Lines {
        data: Bytes,
        /// Line number (1-based) of the first line in `data`.
        first_line: u64,
        /// Byte offset in the stream just after `data` (a file checkpoint).
        end_offset: u64,
    },
    /// A line over the limit, skipped.
    TooLong {
        line: u64,
        /// Its first bytes, for the dead letter queue.
        prefix: Bytes,
        /// Its full size in bytes, without the newline.
        size: u64,
        end_offset: u64,
    },
}

impl Frame {
    pub fn end_offset(&self) -> u64 {
        match self {
            Frame::Lines { end_offset, .. } | Frame::TooLong { end_offset, .. } => *end_offset,
        }
    }
}

/// A tokio-util decoder that yields chunks of up to about `chunk_bytes` of whole lines.
#[derive(Debug)]
pub struct LineFramer {
    max_line_bytes: usize,
    chunk_bytes: usize,
    next_line: u64,
    offset: u64,
    /// Set while skipping the rest of a too-long line.
    discarding: Option<Discarding>,
}

#[derive(Debug)]
struct Discarding {
    line: u64,
    prefix: Bytes,
    size: u64,
}

impl LineFramer {
    pub fn new(max_line_bytes: usize, chunk_bytes: usize) -> LineFramer {
        LineFramer::starting_at(max_line_bytes, chunk_bytes, 1, 0)
    }

    /// A framer resuming at `line` and byte `offset` (a file read from a checkpoint).
    pub fn starting_at(max_line_bytes: usize, chunk_bytes: usize, line: u64, offset: u64) -> Self {
        LineFramer {
            max_line_bytes: max_line_bytes.max(1),
            chunk_bytes: chunk_bytes.max(1),
            next_line: line,
            offset,
            discarding: None,
        }
    }

    pub fn max_line_bytes(&self) -> usize {
        self.max_line_bytes
    }

    fn lines(&mut self, data: Bytes) -> Frame {
        let first_line = self.next_line;
        self.next_line += memchr::memchr_iter(b'\n', &data).count() as u64;
        self.offset += data.len() as u64;
        Frame::Lines {
            data,
            first_line,
            end_offset: self.offset,
        }
    }

    fn too_long(&mut self, d: Discarding, consumed: u64) -> Frame {
        self.offset += consumed;
        self.next_line = d.line + 1;
        Frame::TooLong {
            line: d.line,
            prefix: d.prefix,
            size: d.size,
            end_offset: self.offset,
        }
    }
}

impl Decoder for LineFramer {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        if let Some(d) = self.discarding.as_mut() {
            return Ok(match memchr::memchr(b'\n', buf) {
                Some(i) => {
                    d.size += i as u64;
                    let _ = buf.split_to(i + 1);
                    let d = self.discarding.take().expect("discarding");
                    // The skipped bytes were counted in `size`; the newline is one more.
                    Some(self.too_long_after_skip(d))
                }
                None => {
                    d.size += buf.len() as u64;
                    buf.clear();
                    None
                }
            });
        }
        let window = &buf[..buf.len().min(self.chunk_bytes)];
        let end = match memchr::memrchr(b'\n', window) {
            Some(i) => Some(i),
            None => memchr::memchr(b'\n', &buf[window.len()..]).map(|i| i + window.len()),
        };
        match end {
            Some(i) if i <= self.max_line_bytes || memchr::memrchr(b'\n', &buf[..i]).is_some() => {
                let data = buf.split_to(i + 1).freeze();
                Ok(Some(self.lines(data)))
            }
            Some(i) => {
                // One line, longer than allowed, whole in the buffer.
                let line = buf.split_to(i + 1);
                let d = Discarding {
                    line: self.next_line,
                    prefix: prefix_of(&line[..i]),
                    size: i as u64,
                };
                Ok(Some(self.too_long(d, i as u64 + 1)))
            }
            None if buf.len() > self.max_line_bytes => {
                self.discarding = Some(Discarding {
                    line: self.next_line,
                    prefix: prefix_of(buf),
                    size: buf.len() as u64,
                });
                buf.clear();
                Ok(None)
            }
            None => Ok(None),
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        if let Some(frame) = self.decode(buf)? {
            return Ok(Some(frame));
        }
        if let Some(d) = self.discarding.take() {
            let consumed = d.size;
            self.offset += consumed;
            self.next_line = d.line + 1;
            return Ok(Some(Frame::TooLong {
                line: d.line,
                prefix: d.prefix,
                size: d.size,
                end_offset: self.offset,
            }));
        }
        if buf.is_empty() {
            return Ok(None);
        }
        let data = buf.split().freeze();
        Ok(Some(self.lines(data)))
    }
}

impl LineFramer {
    /// Ends a discarded line whose bytes were already dropped from the buffer.
    fn too_long_after_skip(&mut self, d: Discarding) -> Frame {
        let consumed = d.size + 1;
        self.too_long(d, consumed)
    }
}

fn prefix_of(line: &[u8]) -> Bytes {
    Bytes::copy_from_slice(&line[..line.len().min(TOO_LONG_PREFIX_BYTES)])
}

/// The lines of a chunk with their numbers: `\n` and a trailing `\r` removed.
pub fn split_lines(data: &[u8], first_line: u64) -> impl Iterator<Item = (u64, &[u8])> {
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let mut start = 0;
    let mut ends = memchr::memchr_iter(b'\n', body).chain(std::iter::once(body.len()));
    let mut number = first_line;
    std::iter::from_fn(move || {
        let end = ends.next()?;
        let line = &body[start..end];
        start = end + 1;
        number += 1;
        Some((number - 1, line.strip_suffix(b"\r").unwrap_or(line)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[&[u8]], max: usize, chunk: usize) -> Vec<Frame> {
        let mut framer = LineFramer::new(max, chunk);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in input {
            buf.extend_from_slice(piece);
            while let Some(f) = framer.decode(&mut buf).unwrap() {
                out.push(f);
            }
        }
        while let Some(f) = framer.decode_eof(&mut buf).unwrap() {
            out.push(f);
        }
        out
    }

    fn lines_of(frames: &[Frame]) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        for f in frames {
            match f {
                Frame::Lines {
                    data, first_line, ..
                } => {
                    for (n, l) in split_lines(data, *first_line) {
                        out.push((n, String::from_utf8_lossy(l).into_owned()));
                    }
                }
                Frame::TooLong { line, size, .. } => {
                    out.push((*line, format!("<too long {size}>")))
                }
            }
        }
        out
    }

    #[test]
    fn crlf_and_a_last_line_without_newline() {
        let f = frames(&[b"a\r\nb\n", b"c"], 100, 100);
        assert_eq!(
            lines_of(&f),
            vec![(1, "a".into()), (2, "b".into()), (3, "c".into())]
        );
        assert_eq!(f.last().unwrap().end_offset(), 6);
    }

    #[test]
    fn empty_lines_keep_their_numbers() {
        let f = frames(&[b"a\n\n\nb\n"], 100, 100);
        let lines = lines_of(&f);
        assert_eq!(lines[0], (1, "a".into()));
        assert_eq!(lines[3], (4, "b".into()));
    }

    #[test]
    fn a_line_split_across_reads_is_whole() {
        let f = frames(&[b"ab", b"cd", b"ef\ngh", b"\n"], 100, 100);
        assert_eq!(lines_of(&f), vec![(1, "abcdef".into()), (2, "gh".into())]);
    }

    #[test]
    fn a_too_long_line_is_reported_and_the_stream_goes_on() {
        let long = [b'x'; 50];
        let f = frames(&[b"ok\n", &long[..20], &long[20..], b"\nnext\n"], 10, 100);
        assert_eq!(
            lines_of(&f),
            vec![
                (1, "ok".into()),
                (2, "<too long 50>".into()),
                (3, "next".into())
            ]
        );
        assert_eq!(f.last().unwrap().end_offset(), 3 + 51 + 5);
    }

    #[test]
    fn a_too_long_line_whole_in_one_read() {
        let mut input = b"ok\n".to_vec();
        input.extend(vec![b'y'; 30]);
        input.extend(b"\nnext\n");
        let f = frames(&[&input], 10, 5);
        assert_eq!(
            lines_of(&f),
            vec![
                (1, "ok".into()),
                (2, "<too long 30>".into()),
                (3, "next".into())
            ]
        );
    }

    #[test]
    fn a_too_long_last_line_at_eof() {
        let f = frames(&[b"ok\n", &[b'z'; 40]], 10, 100);
        assert_eq!(
            lines_of(&f),
            vec![(1, "ok".into()), (2, "<too long 40>".into())]
        );
        assert_eq!(f.last().unwrap().end_offset(), 43);
    }

    #[test]
    fn chunks_hold_many_lines_up_to_the_chunk_size() {
        let input = b"aaaa\nbbbb\ncccc\ndddd\n";
        let f = frames(&[input], 100, 10);
        assert_eq!(f.len(), 2);
        assert_eq!(lines_of(&f).len(), 4);
        assert_eq!(lines_of(&f)[2], (3, "cccc".into()));
    }
}
