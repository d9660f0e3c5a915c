//! Block-wise weight quantization: NF4 (QLoRA), int4 and int8, with optional
//! double quantization of the block scales.
//!
//! This is the host-side reference: the runtime packs frozen base weights
//! with it before uploading them, and its tests pin the code book and the
//! error bounds. Layout: codes in row-major order, two 4-bit codes per byte
//! (low nibble first) or one byte per int8 code; one scale (the block's
//! absolute maximum) per `block_size` weights.

use crate::config::QuantFormat;
use serde::{Deserialize, Serialize};

/// The 16 NF4 levels: quantiles of a standard normal, scaled to [-1, 1], with
/// an exact zero (Dettmers et al., 2023, appendix E; the values of
/// bitsandbytes' `nf4` table).
pub const NF4: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// Scales per block, plain or themselves quantized.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Scales {
    /// One f32 per block.
    Plain(Vec<f32>),
    /// Double quantization: `scale = offset + codes[i] * group_scale[i / 256] / 127`.
    Double {
        /// Mean of the block scales.
        offset: f32,
        /// One int8 code per block.
        codes: Vec<i8>,
        /// One f32 per 256 blocks.
        group_scale: Vec<f32>,
    },
}

/// Scale blocks per group under double quantization.
pub const SCALE_GROUP: usize = 256;

/// A quantized weight tensor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quantized {
    /// Storage format.
    pub format: QuantFormat,
    /// Number of weights.
    pub len: usize,
    /// Weights per block.
    pub block_size: usize,
    /// Packed codes.
    pub codes: Vec<u8>,
    /// Block scales.
    pub scales: Scales,
}

impl Quantized {
    /// Bytes this tensor occupies when stored.
    pub fn bytes(&self) -> usize {
        self.codes.len()
            + match &self.scales {
                Scales::Plain(s) => s.len() * 4,
                Scales::Double {
                    codes, group_scale, ..
                } => codes.len() + group_scale.len() * 4 + 4,
            }
    }

    /// The scale of block `b`.
    pub fn scale(&self, b: usize) -> f32 {
        match &self.scales {
            Scales::Plain(s) => s[b],
            Scales::Double {
                offset,
                codes,
                group_scale,
            } => offset + codes[b] as f32 * group_scale[b / SCALE_GROUP] / 127.0,
        }
    }

    /// The code of weight `i`, as an index (NF4, int4) or signed value (int8).
    fn code(&self, i: usize) -> i32 {
        match self.format {
            QuantFormat::Int8 => self.codes[i] as i8 as i32,
            _ => {
                let byte = self.codes[i / 2];
                (if i.is_multiple_of(2) {
                    byte & 0x0f
                } else {
                    byte >> 4
                }) as i32
            }
        }
    }

    /// The weights back in f32.
    pub fn dequantize(&self) -> Vec<f32> {
        (0..self.len)
            .map(|i| {
                let s = self.scale(i / self.block_size);
                match self.format {
                    QuantFormat::Nf4 => NF4[self.code(i) as usize] * s,
                    QuantFormat::Int4 => (self.code(i) - 8) as f32 * s / 7.0,
                    QuantFormat::Int8 => self.code(i) as f32 * s / 127.0,
                    QuantFormat::None => unreachable!("unquantized tensors are never packed"),
                }
            })
            .collect()
    }
}

/// Quantizes `weights` block by block. `format` must not be `None`.
pub fn quantize(
    weights: &[f32],
    format: QuantFormat,
    block_size: usize,
    double_quant: bool,
) -> Quantized {
    assert!(
        format != QuantFormat::None && block_size > 0,
        "quantize needs a format and a block size"
    );
    let absmax: Vec<f32> = weights
        .chunks(block_size)
        .map(|b| b.iter().fold(0f32, |m, w| m.max(w.abs())))
        .collect();
    let scales = if double_quant {
        double(&absmax)
    } else {
        Scales::Plain(absmax)
    };
    let mut q = Quantized {
        format,
        len: weights.len(),
        block_size,
        codes: Vec::new(),
        scales,
    };
    // Codes are chosen against the scale that dequantization will use.
    let used: Vec<f32> = (0..weights.len().div_ceil(block_size))
        .map(|b| q.scale(b))
        .collect();
    let code = |i: usize, w: f32| -> i32 {
        let s = used[i / block_size];
        let x = if s > 0.0 { w / s } else { 0.0 };
        match format {
            QuantFormat::Nf4 => nearest_nf4(x) as i32,
            QuantFormat::Int4 => (x * 7.0).round().clamp(-7.0, 7.0) as i32 + 8,
            QuantFormat::Int8 => (x * 127.0).round().clamp(-127.0, 127.0) as i32,
            QuantFormat::None => unreachable!(),
        }
    };
    q.codes = match format {
        QuantFormat::Int8 => weights
            .iter()
            .enumerate()
            .map(|(i, &w)| code(i, w) as i8 as u8)
            .collect(),
        _ => weights
            .chunks(2)
            .enumerate()
            .map(|(pair, ws)| {
                let lo = code(pair * 2, ws[0]) as u8;
                let hi = ws.get(1).map_or(0, |&w| code(pair * 2 + 1, w) as u8);
                lo | (hi << 4)
            })
            .collect(),
    };
    q
}

/// The index of the NF4 level nearest `x` (clamped to [-1, 1]).
pub fn nearest_nf4(x: f32) -> u8 {
    let x = x.clamp(-1.0, 1.0);
    let mut best = 0;
    for (i, level) in NF4.iter().enumerate() {
        if (level - x).abs() < (NF4[best] - x).abs() {
            best = i;
        }
    }
    best as u8
}

fn double(absmax: &[f32]) -> Scales {
    let offset = absmax.iter().sum::<f32>() / absmax.len().max(1) as f32;
    let centered: Vec<f32> = absmax.iter().map(|a| a - offset).collect();
    let group_scale: Vec<f32> = centered
        .chunks(SCALE_GROUP)
        .map(|g| g.iter().fold(0f32, |m, v| m.max(v.abs())))
        .collect();
    let codes = centered
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let s = group_scale[i / SCALE_GROUP];
            if s > 0.0 {
                (v / s * 127.0).round().clamp(-127.0, 127.0) as i8
            } else {
                0
            }
        })
        .collect();
    Scales::Double {
        offset,
        codes,
        group_scale,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic, roughly normal weights.
    fn weights(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::data::rng::Rng::new(seed);
        (0..n)
            .map(|_| {
                let s: f64 = (0..12)
                    .map(|_| rng.next_u64() as f64 / u64::MAX as f64)
                    .sum::<f64>()
                    - 6.0;
                (s * 0.02) as f32
            })
            .collect()
    }

    #[test]
    fn nf4_levels_are_symmetric_normal_quantiles_with_exact_zero() {
        assert_eq!(NF4[7], 0.0);
        assert_eq!((NF4[0], NF4[15]), (-1.0, 1.0));
        assert!(NF4.windows(2).all(|w| w[0] < w[1]));
        // Eight positive levels, seven negative: the asymmetric NF4 of QLoRA.
        assert_eq!(NF4.iter().filter(|&&v| v > 0.0).count(), 8);
    }

    #[test]
    fn every_level_round_trips_exactly() {
        let mut w: Vec<f32> = NF4.to_vec();
        w.extend(NF4.iter().map(|v| v * 0.5));
        let q = quantize(&w, QuantFormat::Nf4, 16, false);
        assert_eq!(q.dequantize(), w);
    }

    #[test]
    fn nf4_error_is_within_half_the_widest_gap() {
        let w = weights(64 * 200, 1);
        let q = quantize(&w, QuantFormat::Nf4, 64, false);
        let d = q.dequantize();
        let widest = NF4.windows(2).map(|p| p[1] - p[0]).fold(0f32, f32::max);
        for (b, (orig, deq)) in w.chunks(64).zip(d.chunks(64)).enumerate() {
            let bound = q.scale(b) * widest / 2.0 + 1e-7;
            for (a, x) in orig.iter().zip(deq) {
                assert!(
                    (a - x).abs() <= bound,
                    "block {b}: {a} vs {x}, bound {bound}"
                );
            }
        }
        let rel = (w
            .iter()
            .zip(&d)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f32>()
            / w.iter().map(|a| a * a).sum::<f32>())
        .sqrt();
        assert!(rel < 0.12, "relative error {rel}");
    }

    #[test]
    fn int_formats_have_their_step_as_error_bound() {
        let w = weights(4096, 2);
        for (format, steps) in [(QuantFormat::Int4, 7.0), (QuantFormat::Int8, 127.0)] {
            let q = quantize(&w, format, 64, false);
            for (i, (a, b)) in w.iter().zip(q.dequantize()).enumerate() {
                assert!(
                    (a - b).abs() <= q.scale(i / 64) / steps / 2.0 + 1e-7,
                    "{format:?} at {i}"
                );
            }
        }
    }

    #[test]
    fn storage_is_four_bits_per_weight_plus_scales() {
        let w = weights(64 * 1024, 3);
        let plain = quantize(&w, QuantFormat::Nf4, 64, false);
        assert_eq!(plain.codes.len(), w.len() / 2);
        assert_eq!(plain.bytes(), w.len() / 2 + 1024 * 4);
        let double = quantize(&w, QuantFormat::Nf4, 64, true);
        assert_eq!(double.bytes(), w.len() / 2 + 1024 + 4 * 4 + 4);
        // Double quantization costs little accuracy.
        let err = |q: &Quantized| {
            w.iter()
                .zip(q.dequantize())
                .map(|(a, b)| (a - b).abs())
                .sum::<f32>()
        };
        assert!(err(&double) < err(&plain) * 1.05);
    }

    #[test]
    fn odd_lengths_and_zero_blocks() {
        let mut w = vec![0.0f32; 64];
        w.extend([0.5, -0.25, 1.0]);
        let q = quantize(&w, QuantFormat::Nf4, 64, true);
        let d = q.dequantize();
        assert_eq!(d.len(), 67);
        assert!(d[..64].iter().all(|&x| x.abs() < 1e-6));
        assert!((d[66] - 1.0).abs() < 0.01);
    }
}
