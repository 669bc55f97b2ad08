//! B-mode rendering: the fan-shaped sector image of a [`Scene`] with speckle.
//!
//! Everything that stays fixed while the probe holds a view is computed once per segment in
//! [`Raster::new`]: which pixels lie inside the sector, the anatomy-plane coordinates each one
//! images (after the segment's depth, probe rotation and offset), its speckle, and its gain
//! (time-gain compensation and the darker sector edges). A frame then only evaluates the
//! scene's shapes at each pixel, with the shapes culled per 16x16 tile, and maps
//! `echo level x speckle x gain` through a compression table, so no trigonometry runs per
//! pixel per frame.
//!
//! Speckle is fully developed: two independent complex Gaussian fields on a polar (range x
//! beam angle) grid, smoothed to the grain size of a real transducer (short along the beam,
//! wider across it and growing with depth as the beams diverge). A frame shows the magnitude
//! of a rotating mix of the two fields, which is Rayleigh distributed at every instant and
//! decorrelates slowly over time, like tissue moving slightly through the beam.

use std::f32::consts::PI;

use super::phantom::{Prim, Scene, V2, v2};
use super::rng::{Rng, Stream};
use super::scan::Segment;
use crate::views::View;

/// Widest half-angle of the sector, which sizes the layout.
const MAX_HALF_ANGLE: f32 = 45.0 * PI / 180.0;

/// Tile edge in pixels for shape culling.
const TILE: usize = 16;

/// Entries of the compression table, covering amplitudes 0..[`LUT_MAX`].
const LUT_LEN: usize = 4096;

/// Largest amplitude the compression table distinguishes (brighter saturates anyway).
const LUT_MAX: f32 = 4.0;

/// Where things sit on the screen for a given frame size.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// Frame width in pixels.
    pub w: usize,
    /// Frame height in pixels.
    pub h: usize,
    /// Sector apex (probe position), in pixels.
    pub apex: V2,
    /// Sector radius in pixels; always the full imaging depth, whatever the depth in cm.
    pub radius: f32,
    /// ECG strip rectangle `[x0, y0, x1, y1)` at the bottom.
    pub strip: [usize; 4],
    /// Integer magnification of the bitmap font.
    pub text_scale: usize,
}

impl Layout {
    /// The layout of a `w` x `h` frame: text band on top, sector in the middle, ECG strip at
    /// the bottom, as on a cart's display.
    pub(crate) fn new(w: usize, h: usize) -> Layout {
        let hf = h as f32;
        let top = (0.06 * hf).round();
        let strip_h = (0.15 * hf).round() as usize;
        let by_height = hf - top - strip_h as f32 - (0.02 * hf).round();
        let by_width = (0.47 * w as f32) / MAX_HALF_ANGLE.sin();
        Layout {
            w,
            h,
            apex: v2((w / 2) as f32, top),
            radius: by_height.min(by_width),
            strip: [w / 40, h - strip_h, w - w / 40, h - 2],
            text_scale: (h / 240).max(1),
        }
    }
}

/// The machine and probe settings of one segment.
#[derive(Debug, Clone)]
pub(crate) struct Look {
    /// Imaging depth in cm (the sector radius).
    pub depth_cm: f32,
    /// Sector half-angle in radians.
    pub half_angle: f32,
    /// Probe rotation in radians.
    pub tilt: f32,
    /// Probe offset in cm (lateral, axial).
    pub shift: V2,
    /// Overall gain factor.
    pub gain: f32,
    /// Display compression exponent (lower shows more of the weak echoes).
    pub gamma: f32,
    /// Time-gain-compensation slope across the depth (-0.3..0.3).
    pub tgc_slope: f32,
    /// Seed of the speckle fields.
    pub speckle_seed: u64,
}

/// The depth a sonographer typically sets for a view, in cm.
fn typical_depth(view: View) -> f64 {
    match view {
        View::Plax => 14.5,
        View::PsaxVes | View::PsaxBase | View::PsaxMid | View::PsaxApical => 14.0,
        View::A2c | View::A3c | View::A4c | View::A5c => 16.5,
        View::Suprasternal => 14.5,
        View::Subcostal => 18.5,
    }
}

impl Look {
    /// Settings of segment number `index`: the overrides in `seg`, the rest drawn from `seed`.
    pub(crate) fn draw(seg: &Segment, seed: u64, index: usize) -> Look {
        let mut rng = Rng::derive(seed, Stream::Segment, index as u64);
        // Draw every value even when overridden, so overriding one keeps the others.
        let depth = typical_depth(seg.view) * rng.range(0.92, 1.08);
        let half_angle = rng.range(39.0, 45.0).to_radians();
        let tilt = rng.range(-5.0, 5.0);
        let shift = [rng.range(-0.6, 0.6), rng.range(-0.4, 0.4)];
        let gain = rng.range(0.8, 1.25);
        let gamma = rng.range(0.7, 0.9);
        let tgc_slope = rng.range(-0.3, 0.3);
        let speckle = rng.next_u64();
        let shift = seg.shift_cm.unwrap_or(shift);
        Look {
            depth_cm: seg.depth_cm.unwrap_or(depth) as f32,
            half_angle: half_angle as f32,
            tilt: seg.tilt_deg.unwrap_or(tilt).to_radians() as f32,
            shift: v2(shift[0] as f32, shift[1] as f32),
            gain: seg.gain.unwrap_or(gain) as f32,
            gamma: gamma as f32,
            tgc_slope: tgc_slope as f32,
            speckle_seed: seg
                .speckle_seed
                .unwrap_or(Rng::derive(speckle, Stream::Speckle, 0).next_u64()),
        }
    }
}

/// A run of sector pixels in one row: `(row, first column, one past the last column)`.
type Span = (u32, u32, u32);

/// A square of the screen with its sector pixels and the anatomy they image.
#[derive(Debug, Clone)]
struct Tile {
    /// Bounding box `[x0, y0, x1, y1]` in anatomy cm of the tile's sector pixels.
    bbox: [f32; 4],
    /// The tile's sector pixels, row by row.
    spans: Vec<Span>,
}

/// Per-segment rendering tables.
#[derive(Debug, Clone)]
pub(crate) struct Raster {
    /// Frame width in pixels (row pitch of the tables).
    w: usize,
    /// Tiles that contain sector pixels.
    tiles: Vec<Tile>,
    /// Anatomy-plane coordinates (cm) each pixel images; unused outside the sector.
    coords: Vec<[f32; 2]>,
    /// Two complex speckle values per pixel (re1, im1, re2, im2), unit mean power.
    speckle: Vec<[f32; 4]>,
    /// Static gain per pixel (overall gain, TGC, edge falloff) times the table scale.
    gain: Vec<f32>,
    /// Inverse of the edge blur width in cm.
    inv_edge: f32,
    /// Edge blur width in cm, the margin for culling.
    edge: f32,
    /// Amplitude-to-grey compression table.
    lut: Vec<u8>,
}

/// Smooths a row-major `nr` x `nt` grid with a [1, 2, 1] kernel in both directions.
fn smooth121(src: &[f32], nr: usize, nt: usize) -> Vec<f32> {
    let at = |v: &[f32], r: usize, t: usize| v[r * nt + t];
    let mut tmp = vec![0.0; src.len()];
    for r in 0..nr {
        for t in 0..nt {
            let l = at(src, r, t.saturating_sub(1));
            let c = at(src, r, t);
            let rr = at(src, r, (t + 1).min(nt - 1));
            tmp[r * nt + t] = 0.25 * (l + 2.0 * c + rr);
        }
    }
    let mut out = vec![0.0; src.len()];
    for r in 0..nr {
        for t in 0..nt {
            let u = at(&tmp, r.saturating_sub(1), t);
            let c = at(&tmp, r, t);
            let d = at(&tmp, (r + 1).min(nr - 1), t);
            out[r * nt + t] = 0.25 * (u + 2.0 * c + d);
        }
    }
    out
}

impl Raster {
    /// Precomputes the tables for `look` on `layout`.
    pub(crate) fn new(layout: &Layout, look: &Look) -> Raster {
        let (w, h) = (layout.w, layout.h);
        let cm_per_px = look.depth_cm / layout.radius;
        let tan_ha = look.half_angle.tan();
        let (ct, st) = (look.tilt.cos(), look.tilt.sin());
        let r2max = layout.radius * layout.radius;

        // Sector span of every row (the sector is convex, so one span per row).
        let mut rows: Vec<Option<(usize, usize)>> = vec![None; h];
        for (py, row) in rows.iter_mut().enumerate() {
            let y = py as f32 + 0.5 - layout.apex.y;
            if y <= 0.0 || y * y > r2max {
                continue;
            }
            let half = (y * tan_ha).min((r2max - y * y).sqrt());
            let x0 = (layout.apex.x - half - 0.5).ceil().max(0.0) as usize;
            let x1 = ((layout.apex.x + half - 0.5).floor() as usize).min(w - 1);
            if x0 <= x1 {
                *row = Some((x0, x1 + 1));
            }
        }

        // Speckle grid: cells of 0.7 grain, grain 0.07 cm along the beam and 0.022 rad across.
        let px_per_cm = 1.0 / cm_per_px;
        let cell_r = (0.7 * 0.07 * px_per_cm).max(1.0);
        let cell_t = 0.7 * 0.022;
        let nr = (layout.radius / cell_r) as usize + 3;
        let nt = (2.0 * look.half_angle / cell_t) as usize + 3;
        let mut rng = Rng::new(look.speckle_seed);
        let fields: Vec<Vec<f32>> = (0..4)
            .map(|_| {
                let white: Vec<f32> = (0..nr * nt)
                    .map(|_| (rng.normal() * std::f64::consts::FRAC_1_SQRT_2) as f32)
                    .collect();
                // [1,2,1]^2 / 16 keeps 36/256 of the variance; restore unit variance.
                smooth121(&white, nr, nt)
                    .into_iter()
                    .map(|v| v * (16.0 / 6.0))
                    .collect()
            })
            .collect();
        // Tissue inhomogeneity: a smooth log-normal gain field with blobs of about 1 cm, fixed
        // to the probe, so no region is a flat grey.
        let tex_cell = (0.5 * px_per_cm).max(2.0);
        let (tx, ty) = (
            (w as f32 / tex_cell) as usize + 3,
            (h as f32 / tex_cell) as usize + 3,
        );
        let tex_white: Vec<f32> = (0..tx * ty).map(|_| rng.normal() as f32).collect();
        let tex_field = smooth121(&smooth121(&tex_white, ty, tx), ty, tx);
        let tex_sd = (tex_field.iter().map(|v| v * v).sum::<f32>() / tex_field.len() as f32)
            .sqrt()
            .max(1e-6);
        let texture = |px: f32, py: f32| {
            let (fx, fy) = (px / tex_cell, py / tex_cell);
            let (ix, iy) = (fx as usize, fy as usize);
            let (ax, ay) = (fx - ix as f32, fy - iy as f32);
            let g = |x: usize, y: usize| tex_field[y * tx + x];
            let top = g(ix, iy) * (1.0 - ax) + g(ix + 1, iy) * ax;
            let bot = g(ix, iy + 1) * (1.0 - ax) + g(ix + 1, iy + 1) * ax;
            (0.25 * (top * (1.0 - ay) + bot * ay) / tex_sd).exp()
        };
        // Correlation of neighbouring smoothed cells, for bilinear variance correction.
        let rho = 4.0 / 6.0;
        let var1 = |f: f32| (1.0 - f) * (1.0 - f) + f * f + 2.0 * f * (1.0 - f) * rho;

        let mut coords = vec![[0.0f32; 2]; w * h];
        let mut speckle = vec![[0.0f32; 4]; w * h];
        let mut gain = vec![0.0f32; w * h];
        let lut_scale = (LUT_LEN - 1) as f32 / LUT_MAX;
        for (py, row) in rows.iter().enumerate() {
            let Some((x0, x1)) = *row else { continue };
            let y = py as f32 + 0.5 - layout.apex.y;
            for px in x0..x1 {
                let x = px as f32 + 0.5 - layout.apex.x;
                let i = py * w + px;
                let (xc, yc) = (x * cm_per_px, y * cm_per_px);
                coords[i] = [
                    ct * xc - st * yc + look.shift.x,
                    st * xc + ct * yc + look.shift.y,
                ];
                let r = (x * x + y * y).sqrt();
                let theta = x.atan2(y);
                let fr = (r / cell_r).min((nr - 2) as f32);
                let ft = ((theta + look.half_angle) / cell_t).clamp(0.0, (nt - 2) as f32);
                let (ir, it) = (fr as usize, ft as usize);
                let (ar, at) = (fr - ir as f32, ft - it as f32);
                let norm = 1.0 / (var1(ar) * var1(at)).sqrt();
                let mut z = [0.0f32; 4];
                for (zk, field) in z.iter_mut().zip(&fields) {
                    let g = |r: usize, t: usize| field[r * nt + t];
                    let top = g(ir, it) * (1.0 - at) + g(ir, it + 1) * at;
                    let bot = g(ir + 1, it) * (1.0 - at) + g(ir + 1, it + 1) * at;
                    *zk = (top * (1.0 - ar) + bot * ar) * norm;
                }
                speckle[i] = z;
                let depth_frac = r / layout.radius;
                let edge = theta / look.half_angle;
                let tgc = 1.0 + look.tgc_slope * (depth_frac - 0.5);
                let falloff = 1.0 - 0.45 * edge.powi(4);
                gain[i] = look.gain * tgc * falloff * texture(px as f32, py as f32) * lut_scale;
            }
        }

        let mut tiles = Vec::new();
        for ty in (0..h).step_by(TILE) {
            for tx in (0..w).step_by(TILE) {
                let mut spans = Vec::new();
                let mut bbox = [f32::MAX, f32::MAX, f32::MIN, f32::MIN];
                for (py, row) in rows.iter().enumerate().skip(ty).take(TILE) {
                    let Some((x0, x1)) = *row else { continue };
                    let (a, b) = (x0.max(tx), x1.min(tx + TILE));
                    if a >= b {
                        continue;
                    }
                    spans.push((py as u32, a as u32, b as u32));
                    for c in &coords[py * w + a..py * w + b] {
                        bbox[0] = bbox[0].min(c[0]);
                        bbox[1] = bbox[1].min(c[1]);
                        bbox[2] = bbox[2].max(c[0]);
                        bbox[3] = bbox[3].max(c[1]);
                    }
                }
                if !spans.is_empty() {
                    tiles.push(Tile { bbox, spans });
                }
            }
        }

        let lut = (0..LUT_LEN)
            .map(|i| {
                let a = i as f32 / lut_scale;
                (255.0 * (a / 1.3).min(1.0).powf(look.gamma)).round() as u8
            })
            .collect();
        let edge = 1.5 * cm_per_px;
        Raster {
            w,
            tiles,
            coords,
            speckle,
            gain,
            inv_edge: 1.0 / edge,
            edge,
            lut,
        }
    }

    /// Draws `scene` into the sector pixels of the grey image `out` (`w * h` bytes; pixels
    /// outside the sector are left alone). `(c, s)` is the cosine and sine of the speckle mix
    /// angle, which the caller advances with time.
    pub(crate) fn render(&self, scene: &Scene, (c, s): (f32, f32), out: &mut [u8]) {
        let mut active: Vec<Prim> = Vec::with_capacity(scene.prims.len());
        let m = self.edge;
        let last = self.lut.len() - 1;
        for tile in &self.tiles {
            active.clear();
            let b = tile.bbox;
            active.extend(scene.prims.iter().filter(|p| {
                p.bbox[0] - m <= b[2]
                    && p.bbox[2] + m >= b[0]
                    && p.bbox[1] - m <= b[3]
                    && p.bbox[3] + m >= b[1]
            }));
            for &(py, x0, x1) in &tile.spans {
                let row = py as usize * self.w;
                let (a, b) = (row + x0 as usize, row + x1 as usize);
                let pixels = out[a..b]
                    .iter_mut()
                    .zip(&self.coords[a..b])
                    .zip(&self.speckle[a..b])
                    .zip(&self.gain[a..b]);
                for (((o, &[x, y]), z), &g) in pixels {
                    let mut e = scene.bg;
                    for p in &active {
                        let d = p.shape.distance(x, y) * self.inv_edge;
                        if d < 0.5 {
                            let alpha = (0.5 - d).min(1.0);
                            e += (p.level - e) * alpha;
                        }
                    }
                    let re = c * z[0] + s * z[2];
                    let im = c * z[1] + s * z[3];
                    let amp = e * g * (re * re + im * im).sqrt();
                    *o = self.lut[(amp as usize).min(last)];
                }
            }
        }
    }

    /// Indices (`y * w + x`) of all pixels inside the sector.
    pub(crate) fn sector_pixels(&self) -> Vec<usize> {
        let mut px: Vec<usize> = self
            .tiles
            .iter()
            .flat_map(|t| t.spans.iter())
            .flat_map(|&(py, x0, x1)| {
                let row = py as usize * self.w;
                (row + x0 as usize)..(row + x1 as usize)
            })
            .collect();
        px.sort_unstable();
        px
    }
}
