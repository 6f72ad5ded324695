//! Content decoding for the tap: every `Content-Encoding` the proxy lets through (see [`ACCEPTED`]).
//!
//! Each decoder is push-driven and keeps nothing back: after [`BodyDecoder::push`] the caller holds every
//! byte the input so far decodes to, so the tap has seen all the client has been given (a decoder that held
//! output until its next input would lag one upstream read — a stream cut there would lose its last usage).
//! [`BodyDecoder::finish`] says whether the encoded stream reached its proper end (a gzip trailer, a zlib
//! checksum, a brotli or zstd last block): a body cut before that is a broken response, not a complete one.

use std::io::Write;

/// The codings the tap decodes, in the form the proxy offers them upstream in `Accept-Encoding`.
pub const ACCEPTED: [&str; 5] = ["gzip", "x-gzip", "deflate", "br", "zstd"];

/// Output buffer step for the block decoders.
const STEP: usize = 32 * 1024;

/// Why decoding stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes are not valid in the declared encoding.
    Corrupt,
    /// The stream ended before the encoding's own end.
    Truncated,
}

pub enum BodyDecoder {
    Identity,
    Gzip(Box<flate2::write::MultiGzDecoder<Vec<u8>>>),
    /// `deflate` is meant to be zlib-wrapped (RFC 9110 §8.4.1.2), but some servers send raw DEFLATE: the
    /// first two bytes decide (`None` until they arrived).
    Deflate {
        inflate: Option<Box<flate2::Decompress>>,
        head: Vec<u8>,
        done: bool,
    },
    Brotli(Box<brotli_decompressor::DecompressorWriter<Vec<u8>>>),
    Zstd {
        raw: Box<zstd::stream::raw::Decoder<'static>>,
        frame_done: bool,
    },
}

impl BodyDecoder {
    /// The decoder for a `Content-Encoding` value; `None` for an encoding the tap cannot read (several
    /// codings stacked, or an unknown one).
    pub fn for_encoding(content_encoding: Option<&str>) -> Option<BodyDecoder> {
        let coding = content_encoding.map(|e| e.trim().to_ascii_lowercase());
        Some(match coding.as_deref() {
            None | Some("") | Some("identity") => BodyDecoder::Identity,
            Some("gzip") | Some("x-gzip") => {
                BodyDecoder::Gzip(Box::new(flate2::write::MultiGzDecoder::new(Vec::new())))
            }
            Some("deflate") => BodyDecoder::Deflate {
                inflate: None,
                head: Vec::new(),
                done: false,
            },
            Some("br") => BodyDecoder::Brotli(Box::new(
                brotli_decompressor::DecompressorWriter::new(Vec::new(), 4096),
            )),
            Some("zstd") => BodyDecoder::Zstd {
                raw: Box::new(zstd::stream::raw::Decoder::new().ok()?),
                frame_done: false,
            },
            Some(_) => return None,
        })
    }

    /// Decodes `input`, appending everything it yields to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
        match self {
            BodyDecoder::Identity => {
                out.extend_from_slice(input);
                Ok(())
            }
            BodyDecoder::Gzip(d) => {
                let r = d.write_all(input).and_then(|()| d.flush());
                out.append(d.get_mut());
                r.map_err(|_| DecodeError::Corrupt)
            }
            BodyDecoder::Brotli(d) => {
                let r = d.write_all(input).and_then(|()| d.flush());
                out.append(d.get_mut());
                r.map_err(|_| DecodeError::Corrupt)
            }
            BodyDecoder::Deflate {
                inflate,
                head,
                done,
            } => {
                let input = match inflate {
                    Some(_) => input,
                    None => {
                        head.extend_from_slice(input);
                        if head.len() < 2 {
                            return Ok(());
                        }
                        let zlib =
                            head[0] & 0x0f == 8 && u16::from_be_bytes([head[0], head[1]]) % 31 == 0;
                        *inflate = Some(Box::new(flate2::Decompress::new(zlib)));
                        &head[..]
                    }
                };
                let Some(d) = inflate.as_mut() else {
                    return Ok(());
                };
                let r = inflate_into(d, input, out, done);
                head.clear();
                r
            }
            BodyDecoder::Zstd { raw, frame_done } => zstd_into(raw, input, out, frame_done),
        }
    }

    /// Ends the body: `Ok` if the encoded stream was complete; any last output is appended to `out`.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), DecodeError> {
        match self {
            BodyDecoder::Identity => Ok(()),
            BodyDecoder::Gzip(d) => {
                let r = d.try_finish();
                out.append(d.get_mut());
                r.map_err(|_| DecodeError::Truncated)
            }
            BodyDecoder::Brotli(d) => {
                let r = d.close();
                out.append(d.get_mut());
                r.map_err(|_| DecodeError::Truncated)
            }
            BodyDecoder::Deflate { done, .. } => done.then_some(()).ok_or(DecodeError::Truncated),
            BodyDecoder::Zstd { frame_done, .. } => {
                frame_done.then_some(()).ok_or(DecodeError::Truncated)
            }
        }
    }
}

fn inflate_into(
    d: &mut flate2::Decompress,
    mut input: &[u8],
    out: &mut Vec<u8>,
    done: &mut bool,
) -> Result<(), DecodeError> {
    loop {
        if *done {
            // Bytes after the end of the stream: not part of this encoding.
            return if input.is_empty() {
                Ok(())
            } else {
                Err(DecodeError::Corrupt)
            };
        }
        out.reserve(STEP);
        let (before_in, before_out) = (d.total_in(), d.total_out());
        let status = d
            .decompress_vec(input, out, flate2::FlushDecompress::Sync)
            .map_err(|_| DecodeError::Corrupt)?;
        let read = (d.total_in() - before_in) as usize;
        let wrote = d.total_out() - before_out;
        input = &input[read..];
        if status == flate2::Status::StreamEnd {
            *done = true;
            continue;
        }
        // All input taken and the output buffer not filled: nothing more is pending.
        if input.is_empty() && out.len() < out.capacity() {
            return Ok(());
        }
        if read == 0 && wrote == 0 {
            return if input.is_empty() {
                Ok(())
            } else {
                Err(DecodeError::Corrupt)
            };
        }
    }
}

fn zstd_into(
    raw: &mut zstd::stream::raw::Decoder<'static>,
    mut input: &[u8],
    out: &mut Vec<u8>,
    frame_done: &mut bool,
) -> Result<(), DecodeError> {
    use zstd::stream::raw::Operation;
    let mut buf = [0u8; 8192];
    loop {
        let status = raw
            .run_on_buffers(input, &mut buf)
            .map_err(|_| DecodeError::Corrupt)?;
        out.extend_from_slice(&buf[..status.bytes_written]);
        input = &input[status.bytes_read..];
        if status.bytes_read > 0 || status.bytes_written > 0 {
            // `remaining == 0`: a frame has just been completely decoded and flushed.
            *frame_done = status.remaining == 0;
        }
        if status.bytes_written < buf.len() && input.is_empty() {
            return Ok(());
        }
        if status.bytes_read == 0 && status.bytes_written == 0 {
            return Err(DecodeError::Corrupt);
        }
    }
}

#[cfg(test)]
mod tests {
    //! Round trips through every coding, in any piece size, are in `tests/it/usage_tap.rs` and the
    //! `tap_encoded` fuzz oracle (they share the encoders of `fuzz/checks.rs`).
    use super::*;

    #[test]
    fn a_sync_flushed_stream_yields_each_piece_before_the_next_arrives() {
        // The upstream flushes after each event; the tap must see an event as soon as its bytes arrived.
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut d = BodyDecoder::for_encoding(Some("gzip")).unwrap();
        let mut seen = Vec::new();
        for event in [&b"data: a\n\n"[..], b"data: b\n\n", b"data: c\n\n"] {
            e.write_all(event).unwrap();
            e.flush().unwrap();
            let piece = std::mem::take(e.get_mut());
            d.push(&piece, &mut seen).unwrap();
            assert!(
                seen.ends_with(event),
                "decoded so far: {:?}",
                String::from_utf8_lossy(&seen)
            );
        }
        // No trailer yet: the stream is cut.
        assert_eq!(d.finish(&mut seen), Err(DecodeError::Truncated));
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        for coding in ["gzip", "deflate", "zstd", "br"] {
            let mut d = BodyDecoder::for_encoding(Some(coding)).unwrap();
            let mut out = Vec::new();
            let r = d.push(b"\xff\xfe not compressed at all \x00\x01", &mut out);
            assert!(r.is_err() || d.finish(&mut out).is_err(), "{coding}");
        }
        assert!(BodyDecoder::for_encoding(Some("compress")).is_none());
        assert!(BodyDecoder::for_encoding(Some("gzip, br")).is_none());
    }
}
