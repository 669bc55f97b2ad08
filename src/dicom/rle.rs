//! RLE Lossless (PS3.5 Annex G) frame decoding, done here rather than by dicom-rs because
//! its decoder indexes the segment header without checking the fragment's length and so
//! panics on a truncated fragment; a damaged export must give an error instead.
//!
//! A frame is a 64-byte header (segment count, then up to 15 offsets) followed by PackBits
//! segments, one per byte plane: sample 0's most significant byte first.

/// Why an RLE fragment does not decode.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RleError {
    /// Shorter than its header.
    #[error("an RLE fragment of {0} bytes is shorter than its 64-byte header")]
    Short(usize),
    /// The header's segment count is not what the image needs.
    #[error("the RLE header lists {got} segments, the image needs {need}")]
    Segments {
        /// Segments listed.
        got: u32,
        /// Segments needed: samples per pixel times bytes per sample.
        need: usize,
    },
    /// A segment offset outside the fragment or before the previous one.
    #[error("RLE segment {0} has an offset outside the fragment")]
    Offset(usize),
    /// A segment that decodes to fewer bytes than the image has pixels.
    #[error("RLE segment {segment} decodes to {got} bytes, {need} needed")]
    Underrun {
        /// The segment.
        segment: usize,
        /// Bytes it gave.
        got: usize,
        /// Pixels in the frame.
        need: usize,
    },
}

/// Decodes one frame of `pixels` pixels with `samples` samples of `bytes_per_sample` bytes
/// into pixel-interleaved samples, multi-byte samples little-endian (what
/// [`super::pixels::to_frame`] reads).
pub fn decode_frame(
    fragment: &[u8],
    pixels: usize,
    samples: usize,
    bytes_per_sample: usize,
) -> Result<Vec<u8>, RleError> {
    if fragment.len() < 64 {
        return Err(RleError::Short(fragment.len()));
    }
    let word = |i: usize| {
        u32::from_le_bytes([
            fragment[4 * i],
            fragment[4 * i + 1],
            fragment[4 * i + 2],
            fragment[4 * i + 3],
        ])
    };
    let need = samples * bytes_per_sample;
    let count = word(0);
    if count as usize != need || need > 15 {
        return Err(RleError::Segments { got: count, need });
    }
    let mut offsets: Vec<usize> = (1..=need).map(|i| word(i) as usize).collect();
    offsets.push(fragment.len());
    let mut out = vec![0u8; pixels * need];
    for segment in 0..need {
        let (start, end) = (offsets[segment], offsets[segment + 1]);
        if start < 64 || start > end || end > fragment.len() {
            return Err(RleError::Offset(segment));
        }
        let plane = unpack_bits(&fragment[start..end], pixels);
        if plane.len() < pixels {
            return Err(RleError::Underrun {
                segment,
                got: plane.len(),
                need: pixels,
            });
        }
        // Segment order is sample by sample, most significant byte first; in the output the
        // least significant byte of a sample comes first.
        let (sample, byte_from_top) = (segment / bytes_per_sample, segment % bytes_per_sample);
        let byte = bytes_per_sample - 1 - byte_from_top;
        let at = sample * bytes_per_sample + byte;
        for (p, &v) in plane.iter().take(pixels).enumerate() {
            out[p * need + at] = v;
        }
    }
    Ok(out)
}

/// PackBits: a header byte n in 0..=127 copies n+1 literal bytes, -127..=-1 repeats the next
/// byte 1-n times, -128 is a no-op. Stops at `limit` bytes or the end of the input.
fn unpack_bits(data: &[u8], limit: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(limit);
    let mut i = 0;
    while i < data.len() && out.len() < limit {
        let n = data[i] as i8;
        i += 1;
        if n >= 0 {
            let len = n as usize + 1;
            let end = (i + len).min(data.len());
            out.extend_from_slice(&data[i..end]);
            i = end;
        } else if n != -128 {
            if let Some(&v) = data.get(i) {
                out.extend(std::iter::repeat_n(v, (1 - i32::from(n)) as usize));
            }
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(offsets: &[u32]) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(&(offsets.len() as u32).to_le_bytes());
        for (i, o) in offsets.iter().enumerate() {
            h[4 * (i + 1)..4 * (i + 2)].copy_from_slice(&o.to_le_bytes());
        }
        h
    }

    #[test]
    fn decodes_runs_literals_and_byte_order() {
        // One 16-bit sample, 4 pixels: high bytes [1,1,1,1] (a run), low bytes [2,3,4,5].
        let mut f = header(&[64, 66]);
        f.extend_from_slice(&[(-3i8) as u8, 1]);
        f.extend_from_slice(&[3, 2, 3, 4, 5]);
        let out = decode_frame(&f, 4, 1, 2).unwrap();
        assert_eq!(out, vec![2, 1, 3, 1, 4, 1, 5, 1]);
    }

    #[test]
    fn interleaves_three_samples() {
        let mut f = header(&[64, 66, 68]);
        f.extend_from_slice(&[(-1i8) as u8, 10, (-1i8) as u8, 20, (-1i8) as u8, 30]);
        assert_eq!(
            decode_frame(&f, 2, 3, 1).unwrap(),
            vec![10, 20, 30, 10, 20, 30]
        );
    }

    #[test]
    fn damaged_fragments_are_errors() {
        assert_eq!(decode_frame(&[0; 10], 4, 1, 1), Err(RleError::Short(10)));
        let f = header(&[64, 65]);
        assert!(matches!(
            decode_frame(&f, 4, 1, 1),
            Err(RleError::Segments { .. })
        ));
        let f = header(&[900]);
        assert_eq!(decode_frame(&f, 4, 1, 1), Err(RleError::Offset(0)));
        let mut f = header(&[64]);
        f.extend_from_slice(&[0, 7]);
        assert!(matches!(
            decode_frame(&f, 4, 1, 1),
            Err(RleError::Underrun { .. })
        ));
    }
}
