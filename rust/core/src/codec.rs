//! Byte formats (docs/internals.md, "Byte formats").
//!
//! * wire frame: `u32 LE count`, then per payload `u32 LE len` + bytes (empty list = 4 zero
//!   bytes). Decoding is strictly bounds-checked and never trusts `count` for allocation.
//! * self-describing outputs: option byte `0` (plain wire frame) or `1` (zstd wire frame); zstd is
//!   chosen when the summed payload size exceeds 1 KiB.
//! * zstd at the library default level; decompression is bounded so a bomb cannot exhaust memory.

use std::cell::RefCell;
use std::io::Read;

use crate::error::{CoreError, Result};

/// Summed payload size above which self-describing outputs are compressed.
pub const OUTPUTS_COMPRESSION_THRESHOLD: usize = 1024;
/// Default bound on any decompressed buffer (graphs, inputs, outputs).
pub const DEFAULT_MAX_DECOMPRESSED_SIZE: usize = 1 << 30;

const OPTION_PLAIN: u8 = 0;
const OPTION_ZSTD: u8 = 1;

fn len_u32(n: usize, what: &str) -> Result<u32> {
    u32::try_from(n).map_err(|_| {
        CoreError::codec(
            "WireFrameTooLarge",
            format!("{what} {n} does not fit the wire frame's u32 length field"),
        )
    })
}

/// Size of the wire frame for payloads of the given lengths.
#[must_use]
pub fn wire_size<'a>(lens: impl IntoIterator<Item = &'a [u8]>) -> usize {
    lens.into_iter().map(|p| 4 + p.len()).sum::<usize>() + 4
}

/// Append the wire frame of `payloads` to `out`.
///
/// # Errors
/// A payload (or the payload count) larger than `u32::MAX`.
pub fn wire_encode_into<P: AsRef<[u8]>>(payloads: &[P], out: &mut Vec<u8>) -> Result<()> {
    out.reserve(wire_size(payloads.iter().map(AsRef::as_ref)));
    out.extend_from_slice(&len_u32(payloads.len(), "payload count")?.to_le_bytes());
    for p in payloads {
        let p = p.as_ref();
        out.extend_from_slice(&len_u32(p.len(), "payload size")?.to_le_bytes());
        out.extend_from_slice(p);
    }
    Ok(())
}

/// # Errors
/// See [`wire_encode_into`].
pub fn wire_encode<P: AsRef<[u8]>>(payloads: &[P]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    wire_encode_into(payloads, &mut out)?;
    Ok(out)
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    let b = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Decode a wire frame into borrowed slices (zero-copy).
///
/// # Errors
/// Truncated header/payload, a count that cannot fit the buffer, or trailing bytes.
pub fn wire_decode(data: &[u8]) -> Result<Vec<&[u8]>> {
    let bad = |m: String| CoreError::codec("MalformedWireFrame", m);
    let count = read_u32(data, 0).ok_or_else(|| {
        bad(format!(
            "wire frame of {} bytes has no count header",
            data.len()
        ))
    })? as usize;
    // Every payload needs at least its 4-byte length, so a garbage count cannot make us allocate.
    let max_count = (data.len() - 4) / 4;
    if count > max_count {
        return Err(bad(format!(
            "wire frame claims {count} payloads but only has {} bytes",
            data.len()
        )));
    }
    let mut out = Vec::with_capacity(count);
    let mut at = 4usize;
    for i in 0..count {
        let len = read_u32(data, at)
            .ok_or_else(|| bad(format!("wire frame truncated in the length of payload {i}")))?
            as usize;
        at += 4;
        let payload = at
            .checked_add(len)
            .and_then(|end| data.get(at..end))
            .ok_or_else(|| {
                bad(format!(
                    "payload {i} claims {len} bytes but only {} remain",
                    data.len() - at
                ))
            })?;
        out.push(payload);
        at += len;
    }
    if at != data.len() {
        return Err(bad(format!(
            "{} trailing bytes after the last payload",
            data.len() - at
        )));
    }
    Ok(out)
}

/// zstd at the library default level.
///
/// # Errors
/// Only if the zstd library fails (out of memory).
pub fn compress(data: &[u8]) -> Result<Vec<u8>> {
    let failed = |e: std::io::Error| CoreError::codec("Zstd", format!("zstd: {e}"));
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if let Some(compressor) = slot.as_mut() {
            return compressor.compress(data).map_err(failed);
        }
        let mut compressor = zstd::bulk::Compressor::new(0).map_err(failed)?;
        let out = compressor.compress(data).map_err(failed);
        *slot = Some(compressor);
        out
    })
}

// zstd contexts reused per thread: making one costs more than compressing a small value.
thread_local! {
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// One-shot decompression with this thread's context, for a frame that declares a small size
/// (None: not possible, take the streaming path).
fn decompress_small(data: &[u8], declared: usize) -> Option<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new().ok()?);
        }
        // Fails when the content is larger than declared (several frames, say).
        slot.as_mut()?.decompress(data, declared).ok()
    })
}

/// Why a bounded decompression failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecompressError {
    /// The output would exceed the bound. `declared` is the content size the zstd frame header
    /// states when it states one above the bound (the stream was then not decompressed at all).
    TooLarge { declared: Option<u64> },
    /// Not a valid zstd stream.
    Malformed(String),
}

/// First growth step of the output buffer; later steps double it (never past the bound).
const DECOMPRESS_CHUNK: usize = 64 << 10;

/// Decompress a zstd stream, refusing to produce more than `max_size` bytes.
///
/// Memory grows with the bytes actually produced, never with what the frame header claims: the
/// buffer starts small and doubles, capped at `max_size + 1` (one byte past the bound tells
/// "exactly `max_size`" from "too large"). A header that declares more than `max_size` is
/// refused up front (either the content really is too large, or the stream is corrupt).
///
/// # Errors
/// See [`DecompressError`].
pub fn decompress_bounded(data: &[u8], max_size: usize) -> Result<Vec<u8>, DecompressError> {
    if let Ok(Some(declared)) = zstd::zstd_safe::get_frame_content_size(data) {
        if declared > u64::try_from(max_size).unwrap_or(u64::MAX) {
            return Err(DecompressError::TooLarge {
                declared: Some(declared),
            });
        }
        // No more memory up front than the streaming path's first step would take.
        let small = usize::try_from(declared)
            .ok()
            .filter(|&n| n <= DECOMPRESS_CHUNK);
        if let Some(out) = small.and_then(|n| decompress_small(data, n)) {
            return Ok(out);
        }
    }
    let mut decoder = zstd::stream::read::Decoder::with_buffer(data)
        .map_err(|e| DecompressError::Malformed(format!("zstd: {e}")))?;
    let cap = max_size.saturating_add(1);
    let mut out: Vec<u8> = Vec::new();
    let mut len = 0usize;
    loop {
        if len == out.len() {
            if len >= cap {
                break;
            }
            let grow = len.max(DECOMPRESS_CHUNK).min(cap - len);
            out.reserve_exact(grow);
            out.resize(len + grow, 0);
        }
        match decoder.read(&mut out[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(DecompressError::Malformed(format!(
                    "malformed zstd stream: {e}"
                )))
            }
        }
    }
    if len > max_size {
        return Err(DecompressError::TooLarge { declared: None });
    }
    out.truncate(len);
    Ok(out)
}

/// [`decompress_bounded`] with the error as a `Codec` [`CoreError`] (`DecompressedTooLarge` or
/// `Zstd`).
///
/// # Errors
/// Malformed stream or an output that would exceed `max_size`.
pub fn decompress(data: &[u8], max_size: usize) -> Result<Vec<u8>> {
    decompress_bounded(data, max_size).map_err(|e| match e {
        DecompressError::TooLarge { declared: Some(n) } => CoreError::codec(
            "DecompressedTooLarge",
            format!("zstd stream decompresses to {n} bytes, more than {max_size} bytes"),
        ),
        DecompressError::TooLarge { declared: None } => CoreError::codec(
            "DecompressedTooLarge",
            format!("zstd stream decompresses to more than {max_size} bytes"),
        ),
        DecompressError::Malformed(m) => CoreError::codec("Zstd", m),
    })
}

/// Self-describing outputs (option byte + wire frame, zstd when payloads exceed 1 KiB).
///
/// # Errors
/// Oversized payloads (see [`wire_encode_into`]).
pub fn encode_outputs<P: AsRef<[u8]>>(payloads: &[P]) -> Result<Vec<u8>> {
    let total: usize = payloads.iter().map(|p| p.as_ref().len()).sum();
    if total > OUTPUTS_COMPRESSION_THRESHOLD {
        let frame = wire_encode(payloads)?;
        let compressed = compress(&frame)?;
        let mut out = Vec::with_capacity(compressed.len() + 1);
        out.push(OPTION_ZSTD);
        out.extend_from_slice(&compressed);
        Ok(out)
    } else {
        let mut out = vec![OPTION_PLAIN];
        wire_encode_into(payloads, &mut out)?;
        Ok(out)
    }
}

/// Decode self-describing outputs.
///
/// # Errors
/// Empty buffer, unknown option byte, malformed frame or zstd stream, or a decompressed size
/// above `max_size`.
pub fn decode_outputs(data: &[u8], max_size: usize) -> Result<Vec<Vec<u8>>> {
    match data.split_first() {
        None => Err(CoreError::codec(
            "MalformedOutputs",
            "self-describing outputs are empty (no option byte)",
        )),
        Some((&OPTION_PLAIN, frame)) => Ok(wire_decode(frame)?
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect()),
        Some((&OPTION_ZSTD, compressed)) => {
            let frame = decompress(compressed, max_size)?;
            Ok(wire_decode(&frame)?
                .into_iter()
                .map(<[u8]>::to_vec)
                .collect())
        }
        Some((&other, _)) => Err(CoreError::codec(
            "MalformedOutputs",
            format!("unknown self-describing outputs option byte {other}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wire_layout() {
        assert_eq!(wire_encode::<&[u8]>(&[]).expect("enc"), vec![0, 0, 0, 0]);
        let f = wire_encode(&[b"ab".as_slice(), b"".as_slice()]).expect("enc");
        assert_eq!(f, vec![2, 0, 0, 0, 2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0]);
        assert_eq!(
            wire_decode(&f).expect("dec"),
            vec![b"ab".as_slice(), b"".as_slice()]
        );
        assert!(wire_decode(&[0, 0, 0, 0]).expect("empty").is_empty());
    }

    #[test]
    fn wire_rejects_garbage() {
        let f = wire_encode(&[b"hello".as_slice(), b"world".as_slice()]).expect("enc");
        for cut in 0..f.len() {
            assert!(wire_decode(&f[..cut]).is_err(), "truncated at {cut}");
        }
        let mut trailing = f.clone();
        trailing.push(0);
        assert!(wire_decode(&trailing).is_err());
        // Huge count must not allocate or panic.
        assert!(wire_decode(&[0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(wire_decode(&[1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(wire_decode(&[]).is_err());
        assert_eq!(
            wire_decode(&[9]).expect_err("short").kind(),
            "MalformedWireFrame"
        );
    }

    #[test]
    fn outputs_option_byte() {
        let small = encode_outputs(&[vec![1u8; 10]]).expect("enc");
        assert_eq!(small[0], 0);
        let exactly = encode_outputs(&[vec![1u8; 1024]]).expect("enc");
        assert_eq!(exactly[0], 0, "1024 bytes is not *more than* 1 KiB");
        let big = encode_outputs(&[vec![1u8; 600], vec![2u8; 600]]).expect("enc");
        assert_eq!(big[0], 1);
        assert!(big.len() < 200, "compressible payload is compressed");
        assert_eq!(
            decode_outputs(&big, DEFAULT_MAX_DECOMPRESSED_SIZE).expect("dec"),
            vec![vec![1u8; 600], vec![2u8; 600]]
        );
        assert_eq!(
            decode_outputs(&[0, 0, 0, 0, 0], 10).expect("empty list"),
            Vec::<Vec<u8>>::new()
        );
        assert!(decode_outputs(&[], 10).is_err());
        assert!(decode_outputs(&[2, 0, 0, 0, 0], 10).is_err());
        assert!(decode_outputs(&[1, 1, 2, 3], 10).is_err());
        assert!(decode_outputs(&[0, 1, 0, 0, 0], 10).is_err());
    }

    #[test]
    fn zstd_bomb_is_bounded() {
        let bomb = compress(&vec![0u8; 64 << 20]).expect("compress");
        assert!(bomb.len() < 64 << 10);
        let e = decompress(&bomb, 1 << 20).expect_err("bounded");
        assert_eq!(e.kind(), "DecompressedTooLarge");
        assert_eq!(decompress(&bomb, 64 << 20).expect("fits").len(), 64 << 20);
        let mut outputs = vec![1u8];
        outputs.extend_from_slice(&bomb);
        assert!(decode_outputs(&outputs, 1 << 20).is_err());
    }

    #[test]
    fn zstd_bomb_without_declared_size_is_bounded_by_what_it_produces() {
        // A streamed frame does not declare its content size: the bound applies while reading.
        let bomb = zstd::stream::encode_all(&vec![0u8; 8 << 20][..], 0).expect("stream");
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&bomb).expect("header"),
            None
        );
        assert_eq!(
            decompress_bounded(&bomb, 1 << 20),
            Err(DecompressError::TooLarge { declared: None })
        );
        assert_eq!(decompress(&bomb, 8 << 20).expect("fits").len(), 8 << 20);
        // The declared size of a bulk frame is refused before decompressing anything.
        let declared = compress(&vec![0u8; 8 << 20]).expect("compress");
        assert_eq!(
            decompress_bounded(&declared, 1 << 20),
            Err(DecompressError::TooLarge {
                declared: Some(8 << 20)
            })
        );
        let e = decompress(&declared, 1 << 20).expect_err("declared");
        assert!(e.to_string().contains("8388608 bytes"), "{e}");
    }

    #[test]
    fn zstd_rejects_garbage() {
        assert!(decompress(b"not zstd at all", 1024).is_err());
        let c = compress(b"hello world").expect("compress");
        assert!(decompress(&c[..c.len() - 2], 1024).is_err());
        assert_eq!(decompress(&c, 11).expect("exact"), b"hello world");
        assert!(decompress(&c, 10).is_err());
        assert_eq!(
            decompress(&compress(b"").expect("c"), 0).expect("empty"),
            b""
        );
    }

    #[test]
    fn reused_contexts_make_the_same_frames_and_take_several_frames_whole() {
        let values: [&[u8]; 3] = [b"first value", b"", &[7u8; 5000]];
        for value in values {
            let frame = compress(value).expect("compress");
            assert_eq!(
                frame,
                zstd::bulk::compress(value, 0).expect("fresh context")
            );
            assert_eq!(decompress(&frame, 1 << 20).expect("round trip"), value);
        }
        // Two frames one after the other: the first declares only its own size, so the
        // one-shot path cannot hold them; the streaming path takes both.
        let mut two = compress(b"abc").expect("c");
        two.extend(compress(b"defgh").expect("c"));
        assert_eq!(decompress(&two, 1024).expect("both frames"), b"abcdefgh");
        assert!(decompress(&two, 7).is_err(), "the bound counts both frames");
        // A frame whose content is larger than the one-shot limit goes the streaming way.
        let large = vec![1u8; DECOMPRESS_CHUNK + 1];
        let frame = compress(&large).expect("c");
        assert_eq!(decompress(&frame, large.len()).expect("large"), large);
    }

    proptest! {
        #[test]
        fn wire_round_trip(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16)) {
            let f = wire_encode(&payloads).expect("enc");
            prop_assert_eq!(f.len(), wire_size(payloads.iter().map(Vec::as_slice)));
            let d = wire_decode(&f).expect("dec");
            prop_assert_eq!(d.len(), payloads.len());
            for (a, b) in d.iter().zip(&payloads) {
                prop_assert_eq!(*a, b.as_slice());
            }
        }

        #[test]
        fn outputs_round_trip(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..700), 0..6)) {
            let enc = encode_outputs(&payloads).expect("enc");
            prop_assert_eq!(decode_outputs(&enc, DEFAULT_MAX_DECOMPRESSED_SIZE).expect("dec"), payloads);
        }

        #[test]
        fn wire_decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = wire_decode(&data);
            let _ = decode_outputs(&data, 1 << 16);
            let _ = decompress(&data, 1 << 16);
        }

        #[test]
        fn zstd_round_trip(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let c = compress(&data).expect("c");
            prop_assert_eq!(decompress(&c, data.len()).expect("d"), data);
        }
    }
}
