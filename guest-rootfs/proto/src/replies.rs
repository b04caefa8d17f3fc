//! The agent's side of the wire: replies as JSON lines, except a streaming run's output.
//!
//! Output is nearly all a guest sends, and under TCG the agent's CPU is the guest's, emulated:
//! base64 and JSON escaping of every piece cost it most of its time (docs/measurements.md). So
//! [`Reply::Output`] travels as a binary frame:
//!
//! ```text
//! 0x00 | id: u64 LE | stream: u8 (0 stdout, 1 stderr) | len: u32 LE | len bytes of data
//! ```
//!
//! A JSON line starts with `{`, so the first byte of a message tells the two apart, and a
//! reader also takes an output reply sent as a JSON line.

use crate::{DecodeError, LineSplitter, Reply, Response, Stream};

/// The first byte of a binary output frame.
const FRAME_MARK: u8 = 0;
/// What follows the mark: the id, the stream and the data's length.
const HEADER: usize = 8 + 1 + 4;

/// Serializes a reply for the wire: a binary frame for a run's output, a JSON line otherwise.
pub fn encode_response(resp: &Response) -> Vec<u8> {
    match (resp.id, &resp.reply) {
        (Some(id), Reply::Output { stream, data }) => output_frame(id, *stream, data),
        _ => crate::encode(resp),
    }
}

/// The frame of a [`Reply::Output`] of request `id`, made straight from the bytes read.
pub fn output_frame(id: u64, stream: Stream, data: &[u8]) -> Vec<u8> {
    let len = u32::try_from(data.len()).expect("an output piece is far under 4 GiB");
    let mut frame = Vec::with_capacity(1 + HEADER + data.len());
    frame.push(FRAME_MARK);
    frame.extend_from_slice(&id.to_le_bytes());
    frame.push(match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    });
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(data);
    frame
}

/// One message read by a [`ReplyReader`].
#[derive(Debug)]
pub enum Received {
    /// A reply, and the bytes it took on the wire.
    Reply { response: Response, len: usize },
    /// A message over the limit; its `len` bytes were skipped, never held.
    Oversized { len: usize },
    /// A message that is none.
    Malformed(DecodeError),
}

/// Where the reader is in the stream.
#[derive(Debug)]
enum At {
    /// Between messages.
    Start,
    /// In a JSON line.
    Line,
    /// In a frame's header, these bytes of it read.
    Header(Vec<u8>),
    /// In a frame's data.
    Data {
        id: u64,
        stream: Stream,
        data: Vec<u8>,
        len: usize,
    },
    /// In a frame that is not kept (over the limit, or of no stream), `left` bytes to go.
    Skip {
        len: usize,
        left: usize,
        why: Skipped,
    },
}

#[derive(Debug, Clone, Copy)]
enum Skipped {
    TooLarge,
    BadStream(u8),
}

/// Cuts the agent's reply stream into replies, never holding more than `limit` bytes of one.
#[derive(Debug)]
pub struct ReplyReader {
    limit: usize,
    lines: LineSplitter,
    at: At,
}

impl ReplyReader {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            lines: LineSplitter::new(limit),
            at: At::Start,
        }
    }

    /// Feeds bytes; returns the messages they complete, in order.
    pub fn push(&mut self, mut bytes: &[u8]) -> Vec<Received> {
        let mut out = Vec::new();
        while let Some(&first) = bytes.first() {
            let taken = match &mut self.at {
                At::Start if first == FRAME_MARK => {
                    self.at = At::Header(Vec::with_capacity(HEADER));
                    1
                }
                At::Start => {
                    self.at = At::Line;
                    0
                }
                At::Line => self.line(bytes, &mut out),
                At::Header(header) => {
                    let n = (HEADER - header.len()).min(bytes.len());
                    header.extend_from_slice(&bytes[..n]);
                    if header.len() == HEADER {
                        let header = std::mem::take(header);
                        self.at = self.frame(&header);
                        self.finish_frame(&mut out);
                    }
                    n
                }
                At::Data { data, len, .. } => {
                    let n = (*len - data.len()).min(bytes.len());
                    data.extend_from_slice(&bytes[..n]);
                    self.finish_frame(&mut out);
                    n
                }
                At::Skip { left, .. } => {
                    let n = (*left).min(bytes.len());
                    *left -= n;
                    self.finish_frame(&mut out);
                    n
                }
            };
            bytes = &bytes[taken..];
        }
        out
    }

    /// Takes bytes of a JSON line; returns how many.
    fn line(&mut self, bytes: &[u8], out: &mut Vec<Received>) -> usize {
        let Some(end) = bytes.iter().position(|&b| b == b'\n') else {
            self.lines.take(bytes);
            return bytes.len();
        };
        self.lines.take(&bytes[..end]);
        out.push(match self.lines.finish_line() {
            crate::Line::Complete(line) => match crate::decode::<Response>(&line, self.limit) {
                Ok(response) => Received::Reply {
                    response,
                    len: line.len() + 1,
                },
                Err(e) => Received::Malformed(e),
            },
            crate::Line::Oversized { len } => Received::Oversized { len },
        });
        self.at = At::Start;
        end + 1
    }

    /// What a frame with this header is read into.
    fn frame(&self, header: &[u8]) -> At {
        let (id, rest) = header.split_at(8);
        let (stream, len) = rest.split_at(1);
        let id = u64::from_le_bytes(id.try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let stream = match stream[0] {
            0 => Stream::Stdout,
            1 => Stream::Stderr,
            other => {
                let why = Skipped::BadStream(other);
                return At::Skip {
                    len,
                    left: len,
                    why,
                };
            }
        };
        if 1 + HEADER + len > self.limit {
            return At::Skip {
                len,
                left: len,
                why: Skipped::TooLarge,
            };
        }
        At::Data {
            id,
            stream,
            data: Vec::with_capacity(len),
            len,
        }
    }

    /// Emits the frame being read if it is whole.
    fn finish_frame(&mut self, out: &mut Vec<Received>) {
        match &mut self.at {
            At::Data {
                id,
                stream,
                data,
                len,
            } if data.len() == *len => {
                out.push(Received::Reply {
                    response: Response {
                        id: Some(*id),
                        reply: Reply::Output {
                            stream: *stream,
                            data: std::mem::take(data),
                        },
                    },
                    len: 1 + HEADER + *len,
                });
            }
            At::Skip { len, left: 0, why } => out.push(match why {
                Skipped::TooLarge => Received::Oversized {
                    len: 1 + HEADER + *len,
                },
                Skipped::BadStream(b) => Received::Malformed(DecodeError::BadStream(*b)),
            }),
            _ => return,
        }
        self.at = At::Start;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn output(id: u64, stream: Stream, data: &[u8]) -> Response {
        Response {
            id: Some(id),
            reply: Reply::Output {
                stream,
                data: data.to_vec(),
            },
        }
    }

    fn replies(received: Vec<Received>) -> Vec<Response> {
        received
            .into_iter()
            .map(|r| match r {
                Received::Reply { response, .. } => response,
                other => panic!("not a reply: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn output_is_a_frame_and_everything_else_a_json_line() {
        let frame = encode_response(&output(7, Stream::Stderr, b"hi\n"));
        assert_eq!(
            frame,
            [&[0u8, 7, 0, 0, 0, 0, 0, 0, 0, 1, 3, 0, 0, 0][..], b"hi\n"].concat()
        );
        let done = Response {
            id: Some(7),
            reply: Reply::Done,
        };
        assert_eq!(encode_response(&done), crate::encode(&done));
        // Output with no id to carry has no frame: it goes as JSON.
        let lost = Response {
            id: None,
            ..output(0, Stream::Stdout, b"x")
        };
        assert_eq!(encode_response(&lost), crate::encode(&lost));
    }

    #[test]
    fn frames_and_lines_are_read_back_whole_and_in_order() {
        let sent = vec![
            output(1, Stream::Stdout, b""),
            Response {
                id: Some(1),
                reply: Reply::InputTaken { bytes: 3 },
            },
            output(1, Stream::Stderr, b"{\n\0 not json"),
            // An old agent's output, as a JSON line.
            output(2, Stream::Stdout, b"line"),
            Response {
                id: None,
                reply: Reply::Done,
            },
        ];
        let mut wire: Vec<u8> = sent[..3].iter().flat_map(encode_response).collect();
        wire.extend(crate::encode(&sent[3]));
        wire.extend(encode_response(&sent[4]));
        let mut reader = ReplyReader::new(1024);
        assert_eq!(replies(reader.push(&wire)), sent);
        let lens: Vec<usize> = ReplyReader::new(1024)
            .push(&wire)
            .iter()
            .map(|r| match r {
                Received::Reply { len, .. } => *len,
                _ => 0,
            })
            .collect();
        assert_eq!(lens.iter().sum::<usize>(), wire.len(), "every byte counted");
    }

    #[test]
    fn a_frame_over_the_limit_is_skipped_and_counted_and_the_next_one_read() {
        let mut wire = encode_response(&output(1, Stream::Stdout, &[b'x'; 100]));
        wire.extend(encode_response(&output(2, Stream::Stdout, b"ok")));
        let mut got = ReplyReader::new(64).push(&wire);
        assert!(matches!(got.remove(0), Received::Oversized { len: 114 }));
        assert_eq!(replies(got), [output(2, Stream::Stdout, b"ok")]);
    }

    #[test]
    fn a_frame_of_no_stream_is_malformed_and_skipped_whole() {
        let mut wire = encode_response(&output(1, Stream::Stdout, b"abc"));
        wire[9] = 9;
        wire.extend(encode_response(&output(2, Stream::Stdout, b"ok")));
        let mut got = ReplyReader::new(1024).push(&wire);
        let bad = got.remove(0);
        assert!(
            matches!(bad, Received::Malformed(DecodeError::BadStream(9))),
            "{bad:?}"
        );
        assert_eq!(replies(got), [output(2, Stream::Stdout, b"ok")]);
    }

    proptest! {
        /// However the stream is cut into reads, the same replies come out.
        #[test]
        fn any_cut_of_the_stream_reads_the_same(
            pieces in proptest::collection::vec((0u64..4, any::<bool>(), proptest::collection::vec(any::<u8>(), 0..300)), 1..8),
            cuts in proptest::collection::vec(1usize..64, 1..40),
        ) {
            let sent: Vec<Response> = pieces
                .iter()
                .map(|(id, err, data)| {
                    if data.first() == Some(&b'j') {
                        Response { id: Some(*id), reply: Reply::Error { message: String::from_utf8_lossy(data).into() } }
                    } else {
                        output(*id, if *err { Stream::Stderr } else { Stream::Stdout }, data)
                    }
                })
                .collect();
            let wire: Vec<u8> = sent.iter().flat_map(encode_response).collect();
            let mut reader = ReplyReader::new(4096);
            let mut got = Vec::new();
            let mut rest = &wire[..];
            for cut in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (now, later) = rest.split_at((*cut).min(rest.len()));
                got.extend(reader.push(now));
                rest = later;
            }
            prop_assert_eq!(replies(got), sent);
        }
    }
}
