//! Per-view heart anatomy: each view as a painter's list of simple shapes moved by the
//! cardiac phase.
//!
//! A view is drawn in its own image plane, in centimetres, with the probe at the origin, `x` to
//! the right of the screen and `y` (depth) downward. Shapes are ellipses (chambers, the LV in
//! short axis, the liver), optionally cut by a straight line (a valve plane), and capsules
//! (line segments with a radius: valve leaflets, vessels, the pericardium). Each shape paints
//! an echo level over what lies beneath it, so a chamber is its myocardium painted first and
//! its blood pool painted on top; layouts follow the standard echo views (Mayo convention:
//! apex at the top of apical views with the LV on the right of the screen).
//!
//! Motion comes from one cardiac phase per frame: chambers are largest at end-diastole (the
//! R-peak) and smallest at end-systole ([`END_SYSTOLE`] of the RR interval), walls thicken as
//! they contract (myocardial area is conserved), the base moves toward the apex, the atria
//! fill while the ventricles empty, and the valves open and close at their physiological
//! times. Per-patient sizes come from [`Patient`], drawn once per simulation.

use std::f32::consts::PI;

use super::rng::Rng;
use crate::views::View;

/// Fraction of the RR interval at which the ventricles are smallest (end-systole).
pub(crate) const END_SYSTOLE: f64 = 0.37;

/// A point or direction in the image plane, in centimetres.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct V2 {
    /// Lateral position, to the right of the screen.
    pub x: f32,
    /// Depth, downward on the screen.
    pub y: f32,
}

/// Shorthand constructor for [`V2`].
pub(crate) const fn v2(x: f32, y: f32) -> V2 {
    V2 { x, y }
}

impl std::ops::Add for V2 {
    type Output = V2;
    fn add(self, o: V2) -> V2 {
        v2(self.x + o.x, self.y + o.y)
    }
}

impl std::ops::Sub for V2 {
    type Output = V2;
    fn sub(self, o: V2) -> V2 {
        v2(self.x - o.x, self.y - o.y)
    }
}

impl std::ops::Mul<f32> for V2 {
    type Output = V2;
    fn mul(self, k: f32) -> V2 {
        v2(self.x * k, self.y * k)
    }
}

impl V2 {
    /// Euclidean length.
    fn len(self) -> f32 {
        (self.x * self.x + self.y * self.y).sqrt()
    }

    /// Unit vector in the same direction (zero stays zero).
    fn norm(self) -> V2 {
        let l = self.len();
        if l > 0.0 { self * (1.0 / l) } else { self }
    }

    /// The vector turned a quarter turn (counter-clockwise in maths axes).
    fn perp(self) -> V2 {
        v2(-self.y, self.x)
    }

    /// Dot product.
    fn dot(self, o: V2) -> f32 {
        self.x * o.x + self.y * o.y
    }

    /// Linear interpolation towards `o`.
    fn lerp(self, o: V2, t: f32) -> V2 {
        self + (o - self) * t
    }

    /// Unit vector at `deg` degrees from the +x axis (clockwise on screen, since y is down).
    fn dir(deg: f32) -> V2 {
        let r = deg.to_radians();
        v2(r.cos(), r.sin())
    }
}

/// A shape in the form the renderer evaluates per pixel.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Shape {
    /// Ellipse centred at `c` with unit major direction `u`, `ia2 = 1/a^2`, `ib2 = 1/b^2`, kept
    /// only where `clip_n . p <= clip_c` (a valve plane; `clip_c` is infinite when uncut).
    Ellipse {
        /// Centre.
        c: V2,
        /// Unit vector along the first semi-axis.
        u: V2,
        /// Inverse square of the first semi-axis.
        ia2: f32,
        /// Inverse square of the second semi-axis.
        ib2: f32,
        /// Normal of the cutting line.
        clip_n: V2,
        /// Offset of the cutting line.
        clip_c: f32,
    },
    /// Points within `r` of the segment from `a` to `a + d`.
    Capsule {
        /// Start point.
        a: V2,
        /// Segment vector.
        d: V2,
        /// `1 / |d|^2`, zero for a disc.
        inv_len2: f32,
        /// Radius.
        r: f32,
    },
}

impl Shape {
    /// Approximate signed distance in cm from `(x, y)` to the outline (negative inside); exact
    /// for capsules, first-order for ellipses, which is all the edge blending needs.
    #[inline(always)]
    pub(crate) fn distance(&self, x: f32, y: f32) -> f32 {
        match *self {
            Shape::Ellipse {
                c,
                u,
                ia2,
                ib2,
                clip_n,
                clip_c,
            } => {
                let dx = x - c.x;
                let dy = y - c.y;
                let p = dx * u.x + dy * u.y;
                let q = dy * u.x - dx * u.y;
                let f = p * p * ia2 + q * q * ib2 - 1.0;
                let gx = p * ia2;
                let gy = q * ib2;
                let g = 2.0 * (gx * gx + gy * gy).sqrt();
                let d = f / g.max(1e-6);
                d.max(clip_n.x * x + clip_n.y * y - clip_c)
            }
            Shape::Capsule { a, d, inv_len2, r } => {
                let px = x - a.x;
                let py = y - a.y;
                let t = ((px * d.x + py * d.y) * inv_len2).clamp(0.0, 1.0);
                let ex = px - d.x * t;
                let ey = py - d.y * t;
                (ex * ex + ey * ey).sqrt() - r
            }
        }
    }
}

/// One painted shape.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Prim {
    /// Outline.
    pub shape: Shape,
    /// Echo level painted inside (amplitude before speckle; blood ~0.03, pericardium ~1).
    pub level: f32,
    /// Bounding box `[x0, y0, x1, y1]` in cm, so the renderer can skip far pixels.
    pub bbox: [f32; 4],
}

/// A rigid placement of a sub-drawing: `p' = R(angle) (p - from) + to`.
#[derive(Debug, Clone, Copy)]
struct Placement {
    /// Cosine of the rotation.
    cos: f32,
    /// Sine of the rotation.
    sin: f32,
    /// Point of the sub-drawing that lands on `to`.
    from: V2,
    /// Where `from` lands.
    to: V2,
}

impl Placement {
    /// No movement.
    const IDENTITY: Placement = Placement {
        cos: 1.0,
        sin: 0.0,
        from: v2(0.0, 0.0),
        to: v2(0.0, 0.0),
    };

    /// Moves a point.
    fn point(&self, p: V2) -> V2 {
        self.dirn(p - self.from) + self.to
    }

    /// Turns a direction.
    fn dirn(&self, d: V2) -> V2 {
        v2(
            d.x * self.cos - d.y * self.sin,
            d.x * self.sin + d.y * self.cos,
        )
    }
}

/// An ellipse under construction: centre, unit direction of semi-axis `a`, semi-axes, and an
/// optional cut (normal, a point on the line) keeping the side the normal points away from.
#[derive(Debug, Clone, Copy)]
struct Ell {
    /// Centre.
    c: V2,
    /// Unit direction of semi-axis `a`.
    u: V2,
    /// Semi-axis along `u`.
    a: f32,
    /// Semi-axis across `u`.
    b: f32,
    /// Cutting line (normal, point); the shape keeps `n . (p - point) <= 0`.
    clip: Option<(V2, V2)>,
}

impl Ell {
    /// An uncut ellipse whose `a` axis points `deg` degrees from the screen's +x axis.
    fn at(c: V2, deg: f32, a: f32, b: f32) -> Ell {
        Ell {
            c,
            u: V2::dir(deg),
            a,
            b,
            clip: None,
        }
    }

    /// A circle.
    fn circle(c: V2, r: f32) -> Ell {
        Ell::at(c, 0.0, r, r)
    }

    /// The same ellipse with both semi-axes grown by `t` (a concentric wall or rim).
    fn grow(self, t: f32) -> Ell {
        Ell {
            a: self.a + t,
            b: self.b + t,
            ..self
        }
    }

    /// The point of the outline at parameter angle `ang` (radians, 0 along `u`).
    fn point(self, ang: f32) -> V2 {
        self.c + self.u * (self.a * ang.cos()) + self.u.perp() * (self.b * ang.sin())
    }
}

/// The drawing of one view at one instant, in painting order.
#[derive(Debug, Clone)]
pub(crate) struct Scene {
    /// Echo level of tissue not covered by any shape.
    pub bg: f32,
    /// Shapes, painted first to last.
    pub prims: Vec<Prim>,
    /// Placement applied to shapes as they are added.
    place: Placement,
}

impl Scene {
    /// An empty scene with background level `bg`, reusing `prims`' allocation.
    pub(crate) fn new(bg: f32, mut prims: Vec<Prim>) -> Scene {
        prims.clear();
        Scene {
            bg,
            prims,
            place: Placement::IDENTITY,
        }
    }

    /// Paints an ellipse.
    fn ell(&mut self, e: Ell, level: f32) {
        let c = self.place.point(e.c);
        let u = self.place.dirn(e.u);
        let (clip_n, clip_c) = match e.clip {
            Some((n, p)) => {
                let n = self.place.dirn(n);
                (n, n.dot(self.place.point(p)))
            }
            None => (v2(0.0, 0.0), f32::INFINITY),
        };
        let hx = (e.a * e.a * u.x * u.x + e.b * e.b * u.y * u.y).sqrt();
        let hy = (e.a * e.a * u.y * u.y + e.b * e.b * u.x * u.x).sqrt();
        let (a, b) = (e.a.max(1e-3), e.b.max(1e-3));
        self.prims.push(Prim {
            shape: Shape::Ellipse {
                c,
                u,
                ia2: 1.0 / (a * a),
                ib2: 1.0 / (b * b),
                clip_n,
                clip_c,
            },
            level,
            bbox: [c.x - hx, c.y - hy, c.x + hx, c.y + hy],
        });
    }

    /// Paints a capsule from `p` to `q` with radius `r`.
    fn capsule(&mut self, p: V2, q: V2, r: f32, level: f32) {
        let a = self.place.point(p);
        let b = self.place.point(q);
        let d = b - a;
        let l2 = d.dot(d);
        self.prims.push(Prim {
            shape: Shape::Capsule {
                a,
                d,
                inv_len2: if l2 > 1e-12 { 1.0 / l2 } else { 0.0 },
                r,
            },
            level,
            bbox: [
                a.x.min(b.x) - r,
                a.y.min(b.y) - r,
                a.x.max(b.x) + r,
                a.y.max(b.y) + r,
            ],
        });
    }

    /// Paints a disc.
    fn disc(&mut self, c: V2, r: f32, level: f32) {
        self.capsule(c, c, r, level);
    }

    /// Paints capsules along a polyline.
    fn polyline(&mut self, pts: &[V2], r: f32, level: f32) {
        for w in pts.windows(2) {
            self.capsule(w[0], w[1], r, level);
        }
    }
}

/// Echo levels of the tissue types for one patient and machine.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Levels {
    /// Unspecified soft tissue around the heart.
    pub tissue: f32,
    /// Myocardium.
    pub myo: f32,
    /// Blood (nearly anechoic).
    pub blood: f32,
    /// Valve leaflets.
    pub valve: f32,
    /// Walls of the great vessels and fibrous annuli.
    pub wall: f32,
    /// Pericardium, the strongest reflector.
    pub peri: f32,
    /// Liver parenchyma.
    pub liver: f32,
}

/// One simulated patient's heart: sizes at end-diastole and how much they move.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Patient {
    /// LV length, apex to mitral annulus, at end-diastole (cm).
    pub lv_len: f32,
    /// LV internal radius at end-diastole (cm).
    pub lv_rad: f32,
    /// LV wall thickness at end-diastole (cm).
    pub wall: f32,
    /// LV fractional shortening of the radius.
    pub fs: f32,
    /// Long-axis shortening fraction.
    pub ls: f32,
    /// RV half-width at end-diastole (cm).
    pub rv_rad: f32,
    /// LA radius (cm).
    pub la_rad: f32,
    /// RA radius (cm).
    pub ra_rad: f32,
    /// Aortic root radius (cm).
    pub ao_rad: f32,
    /// Tissue echo levels.
    pub lv: Levels,
}

impl Patient {
    /// Draws a plausible adult heart.
    pub(crate) fn draw(rng: &mut Rng) -> Patient {
        let mut r = |lo: f64, hi: f64| rng.range(lo, hi) as f32;
        Patient {
            lv_len: r(7.6, 9.0),
            lv_rad: r(2.05, 2.5),
            wall: r(0.75, 1.2),
            fs: r(0.27, 0.38),
            ls: r(0.10, 0.15),
            rv_rad: r(1.4, 1.75),
            la_rad: r(1.6, 2.0),
            ra_rad: r(1.5, 1.85),
            ao_rad: r(1.2, 1.5),
            lv: Levels {
                tissue: r(0.15, 0.21),
                myo: r(0.24, 0.32),
                blood: r(0.02, 0.04),
                valve: r(0.55, 0.75),
                wall: r(0.45, 0.6),
                peri: r(0.8, 1.1),
                liver: r(0.22, 0.28),
            },
        }
    }
}

/// The mechanical state of the heart at one cardiac phase.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Cardiac {
    /// Ventricular filling: 1 at end-diastole, 0 at end-systole.
    pub lv: f32,
    /// Atrial filling: 1 at end-systole, lowest after atrial contraction.
    pub la: f32,
    /// Mitral and tricuspid opening, 0..1 (E and A waves).
    pub mv: f32,
    /// Aortic and pulmonary valve opening, 0..1.
    pub av: f32,
    /// Systolic distension of the great arteries, 0..1.
    pub aorta: f32,
}

impl Cardiac {
    /// The same phase with the contraction (and the atrial filling it causes) scaled by `k`.
    pub(crate) fn weakened(self, k: f32) -> Cardiac {
        Cardiac {
            lv: 1.0 - k * (1.0 - self.lv),
            la: k * self.la,
            ..self
        }
    }
}

/// Cubic ease from 0 (u <= 0) to 1 (u >= 1).
fn smooth(u: f64) -> f64 {
    let u = u.clamp(0.0, 1.0);
    u * u * (3.0 - 2.0 * u)
}

/// The heart at phase `x` (0 at the R-peak, 1 at the next).
pub(crate) fn cardiac(x: f64) -> Cardiac {
    let s = END_SYSTOLE;
    let lv = if x < s {
        0.5 * (1.0 + (std::f64::consts::PI * x / s).cos())
    } else if x < 0.64 {
        // Isovolumic relaxation, then rapid filling (E wave).
        0.8 * smooth((x - s - 0.05) / (0.64 - s - 0.05))
    } else if x < 0.86 {
        // Diastasis.
        0.8 + 0.05 * smooth((x - 0.64) / 0.22)
    } else {
        // Atrial kick.
        0.85 + 0.15 * smooth((x - 0.86) / 0.14)
    };
    let mv = {
        let rise = smooth((x - s - 0.04) / 0.05);
        let diastasis = 1.0 - 0.55 * smooth((x - 0.55) / 0.15);
        let a_wave = 0.45 * smooth((x - 0.82) / 0.05);
        let close = 1.0 - smooth((x - 0.93) / 0.05);
        (rise * diastasis + a_wave).min(1.0) * close
    };
    let av = smooth((x - 0.04) / 0.04) * (1.0 - smooth((x - s + 0.06) / 0.05));
    let aorta = smooth((x - 0.04) / 0.12) * (1.0 - smooth((x - 0.2) / 0.3));
    Cardiac {
        lv: lv as f32,
        la: (1.0 - lv) as f32,
        mv: mv as f32,
        av: av as f32,
        aorta: aorta as f32,
    }
}

/// A ventricle seen along its long axis, cut at its valve plane.
#[derive(Debug, Clone, Copy)]
struct Chamber {
    /// Blood pool.
    blood: Ell,
    /// Myocardium (outer outline).
    myo: Ell,
    /// Centre of the valve plane.
    plane: V2,
    /// Unit vector from apex to base.
    axis: V2,
    /// Valve hinge points: on the `axis.perp()` side, then the other.
    hinges: [V2; 2],
}

impl Chamber {
    /// A bright rim `t` cm thick outside the myocardium, stopping short of the valve plane
    /// as the pericardium folds away at the atrioventricular groove.
    fn pericardium(&self, t: f32) -> Ell {
        Ell {
            clip: Some((self.axis, self.plane - self.axis * 0.5)),
            ..self.myo.grow(t)
        }
    }
}

/// Builds a ventricle from its apex and end-diastolic base centre. `c` is contraction (0 at
/// end-diastole, 1 at end-systole), `fs` the radial and `ls` the long-axis shortening.
fn ventricle(apex: V2, base: V2, rad_ed: f32, wall_ed: f32, c: f32, fs: f32, ls: f32) -> Chamber {
    let full = base - apex;
    let axis = full.norm();
    let len = full.len() * (1.0 - ls * c);
    let rad = rad_ed * (1.0 - fs * c);
    // The widest point sits towards the base (a bullet shape), so the annulus is wide.
    let a = 0.72 * len;
    let centre = apex + axis * a;
    let plane = apex + axis * len;
    let outer = ((rad_ed + wall_ed).powi(2) - rad_ed * rad_ed + rad * rad).sqrt();
    let t = outer - rad;
    let blood = Ell {
        c: centre,
        u: axis,
        a,
        b: rad,
        clip: Some((axis, plane)),
    };
    let myo = Ell {
        c: centre,
        u: axis,
        a: a + 0.8 * t,
        b: outer,
        clip: Some((axis, plane + axis * 0.1)),
    };
    let hw = rad * (1.0 - (0.28f32 / 0.72).powi(2)).sqrt();
    Chamber {
        blood,
        myo,
        plane,
        axis,
        hinges: [plane + axis.perp() * hw, plane - axis.perp() * hw],
    }
}

/// An atrium beyond a ventricle's valve plane, offset sideways by `side` cm; about as wide
/// as the annulus where it meets it.
fn atrium(v: &Chamber, rad: f32, fill: f32, side: f32) -> Ell {
    let f = 0.85 + 0.15 * fill;
    let along = 1.15 * rad * f;
    Ell {
        c: v.plane + v.axis.perp() * side + v.axis * (0.5 * along),
        u: v.axis,
        a: along,
        b: 1.12 * rad * f,
        clip: Some((v.axis * -1.0, v.plane)),
    }
}

/// Two valve leaflets hinged at `hinges` that open towards `into` (unit vector, the
/// direction of forward flow) and meet between the hinges when closed.
fn leaflets(
    sc: &mut Scene,
    [h0, h1]: [V2; 2],
    into: V2,
    open: f32,
    lens: [f32; 2],
    thick: f32,
    level: f32,
) {
    let w = (h1 - h0).len();
    let mid = (h0 + h1) * 0.5 - into * (0.06 * w);
    for (h, other, len) in [(h0, h1, lens[0]), (h1, h0, lens[1])] {
        let closed = mid - h;
        let inward = (other - h).norm();
        let opened = (into + inward * 0.2).norm() * len;
        let tip = h + closed.lerp(opened, open);
        let knee = h + (tip - h) * 0.5 + inward * (0.08 * open * len);
        sc.polyline(&[h, knee, tip], thick, level);
    }
}

/// Near-field echoes of the chest wall (skin, fat, muscle layers).
fn chest_wall(sc: &mut Scene, lv: &Levels, bright: f32) {
    for (y, r, k) in [(0.35, 0.12, 1.6), (0.9, 0.2, 1.1), (1.5, 0.1, 1.9)] {
        sc.capsule(v2(-12.0, y), v2(12.0, y + 0.15), r, lv.tissue * k * bright);
    }
}

/// Builds the scene of `view` for `patient` in mechanical state `k`, reusing `prims`.
pub(crate) fn build(view: View, patient: &Patient, k: &Cardiac, prims: Vec<Prim>) -> Scene {
    let lv = patient.lv;
    match view {
        View::Plax => plax(Scene::new(lv.tissue, prims), patient, k),
        View::PsaxVes => psax_vessels(Scene::new(lv.tissue, prims), patient, k),
        View::PsaxBase | View::PsaxMid | View::PsaxApical => {
            short_axis(Scene::new(lv.tissue, prims), patient, k, view)
        }
        View::A2c => two_chamber(Scene::new(lv.tissue * 0.85, prims), patient, k),
        View::A3c => three_chamber(Scene::new(lv.tissue * 0.85, prims), patient, k),
        View::A4c => apical_four(Scene::new(lv.tissue * 0.85, prims), patient, k, false),
        View::A5c => apical_four(Scene::new(lv.tissue * 0.85, prims), patient, k, true),
        View::Suprasternal => suprasternal(Scene::new(lv.tissue * 1.2, prims), patient, k),
        View::Subcostal => subcostal(Scene::new(lv.tissue * 0.8, prims), patient, k),
    }
}

/// Parasternal long axis: RV outflow on top, septum, LV running off to the left, aortic root
/// to the upper right with its valve, LA below it, mitral valve between LA and LV, the bright
/// posterior pericardium and the descending aorta behind it.
fn plax(mut sc: Scene, p: &Patient, k: &Cardiac) -> Scene {
    let lv = p.lv;
    let c = 1.0 - k.lv;
    chest_wall(&mut sc, &lv, 1.3);
    let rad = p.lv_rad * (1.0 - p.fs * c);
    let outer = ((p.lv_rad + p.wall).powi(2) - p.lv_rad.powi(2) + rad * rad).sqrt();
    let lv_c = v2(-2.4, 7.1);
    let lv_len = 5.0 * (1.0 - 0.5 * p.ls * c);
    let lv_blood = Ell::at(lv_c, -8.0, lv_len, rad);
    let lv_myo = Ell::at(lv_c, -8.0, lv_len + p.wall, outer);
    let ao = p.ao_rad * (1.0 + 0.06 * k.aorta);
    let ao_path = [v2(0.2, 5.9), v2(2.6, 5.2), v2(8.0, 4.2)];
    let sinus = v2(2.6, 5.2);
    let laf = 0.82 + 0.18 * k.la;
    let la = Ell::at(
        v2(4.0, 8.6),
        -5.0,
        2.0 * laf * p.la_rad / 1.8,
        1.6 * laf * p.la_rad / 1.8,
    );
    let rv_c = v2(-1.0, 2.75);
    let rv_blood = Ell::at(rv_c, -6.0, 5.5, 0.72 * p.rv_rad * (1.0 - 0.15 * c));

    // Pericardium behind the posterior wall and the LA.
    let peri: Vec<V2> = (0..=6)
        .map(|i| lv_myo.grow(0.25).point(PI * (0.25 + 0.1 * i as f32)))
        .rev()
        .chain([v2(4.0, 10.6 + 0.1 * k.la), v2(8.0, 10.2)])
        .collect();
    sc.polyline(&peri, 0.22, lv.peri);
    sc.ell(rv_blood.grow(0.45), lv.myo);
    sc.ell(rv_blood, lv.blood);
    sc.ell(lv_myo, lv.myo);
    sc.ell(la.grow(0.3), lv.myo);
    sc.polyline(&ao_path[1..], ao + 0.28, lv.wall);
    sc.disc(sinus, ao * 1.15 + 0.28, lv.wall);
    sc.ell(lv_blood, lv.blood);
    sc.ell(la, lv.blood);
    sc.polyline(&ao_path, ao, lv.blood);
    sc.disc(sinus, ao * 1.15, lv.blood);
    // Mitral inflow between LV and LA.
    sc.capsule(
        v2(0.6, 8.1),
        v2(3.4, 8.4),
        1.05 * (0.8 + 0.2 * laf),
        lv.blood,
    );
    // Descending aorta in the atrioventricular groove.
    sc.disc(v2(2.3, 11.8), 0.85 + 0.25, lv.wall);
    sc.disc(v2(2.3, 11.8), 0.85, lv.blood);
    // Aortic valve: cusps hinged on the anterior and posterior root walls.
    let dir = (ao_path[1] - ao_path[0]).norm();
    let across = dir.perp();
    let av_hinge = ao_path[0].lerp(ao_path[1], 0.7);
    leaflets(
        &mut sc,
        [
            av_hinge + across * (ao * 0.97),
            av_hinge - across * (ao * 0.97),
        ],
        dir,
        k.av,
        [1.3, 1.3],
        0.09,
        lv.valve,
    );
    // Mitral valve: long anterior leaflet from the aortic-mitral continuity, short posterior.
    let mv_a = v2(1.8, 6.9 + 0.2 * c);
    let mv_p = v2(2.5, 9.7 - 0.3 * c);
    leaflets(
        &mut sc,
        [mv_a, mv_p],
        v2(-1.0, 0.25).norm(),
        k.mv,
        [2.3, 1.4],
        0.12,
        lv.valve,
    );
    sc.disc(mv_p, 0.25, lv.wall);
    sc
}

/// Parasternal short axis at the great vessels: aortic valve in the centre ("Mercedes" sign
/// when closed), RV outflow wrapping over it to the pulmonary valve and artery on the right,
/// LA below, RA and tricuspid valve on the left.
fn psax_vessels(mut sc: Scene, p: &Patient, k: &Cardiac) -> Scene {
    let lv = p.lv;
    chest_wall(&mut sc, &lv, 1.2);
    let ao = p.ao_rad * (1.0 + 0.05 * k.aorta);
    let ao_c = v2(0.2, 6.9);
    let laf = 0.82 + 0.18 * k.la;
    let la = Ell::at(v2(0.5, 10.0), 0.0, 2.3 * laf, 1.3 * laf);
    let ra = Ell::at(v2(-3.1, 9.0), 100.0, 1.7 * laf * p.ra_rad / 1.7, 1.5 * laf);
    let rvot = [
        v2(-3.4, 7.3),
        v2(-3.2, 5.3),
        v2(-1.9, 4.0),
        v2(0.2, 3.5),
        v2(2.2, 3.9),
        v2(3.3, 5.0),
    ];
    let pa = [v2(3.3, 5.0), v2(4.0, 6.6), v2(4.3, 8.6)];
    let peri: Vec<V2> = (0..=7)
        .map(|i| la.grow(0.5).point(PI * (0.1 + 0.1 * i as f32)))
        .collect();
    sc.polyline(&peri, 0.2, lv.peri);
    sc.polyline(&rvot, 1.0 * p.rv_rad / 1.6 + 0.45, lv.myo);
    sc.ell(la.grow(0.3), lv.myo);
    sc.ell(ra.grow(0.3), lv.myo);
    sc.disc(ao_c, ao + 0.3, lv.wall);
    sc.polyline(&pa, 0.95 + 0.2, lv.wall);
    sc.polyline(&rvot, 1.0 * p.rv_rad / 1.6, lv.blood);
    sc.polyline(&pa, 0.95 * (1.0 + 0.06 * k.aorta), lv.blood);
    sc.ell(la, lv.blood);
    sc.ell(ra, lv.blood);
    sc.disc(ao_c, ao, lv.blood);
    // Aortic valve: three commissure lines (closed) retracting to the wall (open).
    for deg in [90.0f32, 210.0, 330.0] {
        let d = V2::dir(deg);
        let wall_pt = ao_c + d * ao;
        let inner = ao_c + d * (ao * 0.9 * k.av);
        sc.capsule(inner, wall_pt, 0.09, lv.valve);
    }
    // Pulmonary valve.
    let pv0 = v2(3.3, 5.0);
    let pd = (pa[1] - pa[0]).norm();
    leaflets(
        &mut sc,
        [pv0 + pd.perp() * 0.9, pv0 - pd.perp() * 0.9],
        pd,
        k.av,
        [0.9, 0.9],
        0.08,
        lv.valve,
    );
    // Tricuspid valve between RA and RV inflow.
    leaflets(
        &mut sc,
        [v2(-4.3, 8.0), v2(-2.5, 7.8)],
        v2(0.0, -1.0),
        k.mv,
        [1.3, 1.1],
        0.1,
        lv.valve,
    );
    sc
}

/// Parasternal short axis of the LV at the mitral valve, papillary muscles or apex: the round
/// LV with the RV as a crescent anterior and to the left.
fn short_axis(mut sc: Scene, p: &Patient, k: &Cardiac, view: View) -> Scene {
    let lv = p.lv;
    let c = 1.0 - k.lv;
    chest_wall(&mut sc, &lv, 1.2);
    // Cavity size and contraction at each level: the base is widest, the apex contracts most.
    let (scale, fs_k, centre, rv_scale) = match view {
        View::PsaxBase => (1.05, 0.85, v2(0.3, 7.6), 1.0),
        View::PsaxMid => (0.95, 1.0, v2(0.3, 7.4), 0.9),
        _ => (0.5, 1.25, v2(0.2, 6.8), 0.45),
    };
    let r_ed = p.lv_rad * scale;
    let r = r_ed * (1.0 - p.fs * fs_k * c);
    let outer = ((r_ed + p.wall).powi(2) - r_ed * r_ed + r * r).sqrt();
    let lv_blood = Ell::at(centre, 0.0, r * 1.04, r * 0.97);
    let lv_myo = Ell::circle(centre, outer);
    // The RV ellipse is mostly covered by the LV, leaving the crescent anterior and left.
    let rv_c = centre + v2(-1.0, -2.3) * rv_scale;
    let rv_blood = Ell::at(
        rv_c,
        -28.0,
        3.9 * rv_scale * p.rv_rad / 1.6,
        2.1 * rv_scale * (1.0 - 0.2 * c),
    );
    // Pericardium: bright behind (below) the heart only.
    let peri = Ell {
        clip: Some((v2(0.0, -1.0), centre - v2(0.0, 0.3 * outer))),
        ..lv_myo.grow(0.3)
    };
    sc.ell(peri, lv.peri);
    sc.ell(rv_blood.grow(0.45), lv.myo);
    sc.ell(rv_blood, lv.blood);
    sc.ell(lv_myo, lv.myo);
    sc.ell(lv_blood, lv.blood);
    match view {
        View::PsaxBase => {
            // Mitral "fish mouth": leaflet rim around an orifice that closes to a line.
            let open = k.mv;
            let half_w = 0.78 * r;
            let rim = Ell::at(centre + v2(0.0, 0.15), 0.0, half_w, 0.16 + 0.55 * open * r);
            sc.ell(rim, lv.valve);
            if open > 0.02 {
                let hole = Ell::at(rim.c, 0.0, half_w - 0.2, 0.5 * open * r);
                sc.ell(hole, lv.blood);
            }
        }
        View::PsaxMid => {
            // Anterolateral (4 o'clock) and posteromedial (8 o'clock) papillary muscles.
            let pr = 0.45 * (1.0 + 0.35 * c) * p.wall / 0.95;
            for deg in [35.0f32, 140.0] {
                let at = centre + V2::dir(deg) * (r - 0.7 * pr);
                sc.ell(Ell::at(at, deg, pr * 1.2, pr), lv.myo * 0.95);
            }
        }
        _ => {}
    }
    sc
}

/// Apical four chamber (and, with `five`, the five chamber with the LV outflow tract and
/// aortic valve in the middle): LV on the right, RV on the left, atria below, the crux where
/// the septa meet the valve planes.
fn apical_four(mut sc: Scene, p: &Patient, k: &Cardiac, five: bool) -> Scene {
    chest_wall(&mut sc, &p.lv, 0.8);
    four_chambers(&mut sc, p, k, five);
    sc
}

/// The four-chamber heart in apical orientation (shared with the subcostal view).
fn four_chambers(sc: &mut Scene, p: &Patient, k: &Cardiac, five: bool) {
    let lv = p.lv;
    let c = 1.0 - k.lv;
    let apex_lv = v2(1.0, 2.0);
    let lvc = ventricle(
        apex_lv,
        apex_lv + v2(0.9, p.lv_len),
        p.lv_rad,
        p.wall,
        c,
        p.fs,
        p.ls,
    );
    // The RV is narrower and shorter: its apex sits well below the true (LV) apex.
    let apex_rv = v2(-2.4, 4.3);
    let rvc = ventricle(
        apex_rv,
        v2(-2.8, 1.5 + p.lv_len),
        p.rv_rad,
        0.45,
        c,
        0.22,
        p.ls,
    );
    let la = atrium(&lvc, p.la_rad, k.la, 0.5);
    let ra = atrium(&rvc, p.ra_rad, k.la, -0.4);
    sc.ell(lvc.pericardium(0.2), lv.peri * 0.8);
    sc.ell(rvc.pericardium(0.15), lv.peri * 0.6);
    sc.ell(lvc.myo, lv.myo);
    sc.ell(rvc.myo, lv.myo);
    sc.ell(la.grow(0.3), lv.myo);
    sc.ell(ra.grow(0.3), lv.myo);
    sc.ell(lvc.blood, lv.blood);
    sc.ell(rvc.blood, lv.blood);
    sc.ell(la, lv.blood);
    sc.ell(ra, lv.blood);
    // Crux and interatrial septum.
    let crux = (lvc.hinges[0] + rvc.hinges[1]) * 0.5;
    let ias_end = (la.point(PI * 0.5) + ra.point(-PI * 0.5)) * 0.5 + v2(0.0, 1.0);
    sc.capsule(crux, ias_end, 0.12, lv.wall);
    sc.disc(crux, 0.3, lv.wall);
    let into_lv = lvc.axis * -1.0;
    let into_rv = rvc.axis * -1.0;
    leaflets(
        sc,
        [lvc.hinges[0], lvc.hinges[1]],
        into_lv,
        k.mv,
        [2.0, 1.4],
        0.12,
        lv.valve,
    );
    leaflets(
        sc,
        [rvc.hinges[0], rvc.hinges[1]],
        into_rv,
        k.mv,
        [1.5, 1.3],
        0.11,
        lv.valve,
    );
    sc.disc(lvc.hinges[1], 0.25, lv.wall);
    sc.disc(rvc.hinges[0], 0.22, lv.wall);
    if five {
        // LV outflow tract and aortic root rising out of the base between the atria.
        let ao = p.ao_rad * 0.9 * (1.0 + 0.05 * k.aorta);
        let root0 = lvc.hinges[0] + v2(0.5, -1.2);
        let root1 = root0 + v2(0.1, 1.6);
        let root2 = root0 + v2(0.5, 4.4);
        sc.polyline(&[root1, root2], ao + 0.28, lv.wall);
        sc.polyline(&[root0, root1, root2], ao, lv.blood);
        let d = (root2 - root1).norm();
        let hinge = root1 + d * 0.4;
        leaflets(
            sc,
            [
                hinge + d.perp() * (ao * 0.97),
                hinge - d.perp() * (ao * 0.97),
            ],
            d,
            k.av,
            [1.2, 1.2],
            0.09,
            lv.valve,
        );
    }
}

/// Apical two chamber: the LV alone above the LA, with the coronary sinus in the groove.
fn two_chamber(mut sc: Scene, p: &Patient, k: &Cardiac) -> Scene {
    let lv = p.lv;
    let c = 1.0 - k.lv;
    chest_wall(&mut sc, &lv, 0.8);
    let apex = v2(0.2, 2.2);
    let lvc = ventricle(
        apex,
        apex + v2(0.4, p.lv_len + 0.3),
        p.lv_rad * 1.02,
        p.wall,
        c,
        p.fs,
        p.ls,
    );
    let la = atrium(&lvc, p.la_rad * 1.1, k.la, 0.0);
    sc.ell(lvc.pericardium(0.2), lv.peri * 0.8);
    sc.ell(lvc.myo, lv.myo);
    sc.ell(la.grow(0.3), lv.myo);
    sc.ell(lvc.blood, lv.blood);
    sc.ell(la, lv.blood);
    // Coronary sinus in the atrioventricular groove, left of the annulus.
    let cs = lvc.hinges[0] + lvc.axis.perp() * 0.9 + lvc.axis * 0.5;
    sc.disc(cs, 0.55, lv.wall);
    sc.disc(cs, 0.4, lv.blood);
    leaflets(
        &mut sc,
        [lvc.hinges[0], lvc.hinges[1]],
        lvc.axis * -1.0,
        k.mv,
        [1.5, 2.0],
        0.12,
        lv.valve,
    );
    sc.disc(lvc.hinges[0], 0.25, lv.wall);
    sc.disc(lvc.hinges[1], 0.25, lv.wall);
    sc
}

/// Apical three chamber (apical long axis): LV, LA down and to the left, and the LV outflow
/// tract with the aortic valve and root leaving the base to the lower right.
fn three_chamber(mut sc: Scene, p: &Patient, k: &Cardiac) -> Scene {
    let lv = p.lv;
    let c = 1.0 - k.lv;
    chest_wall(&mut sc, &lv, 0.8);
    let apex = v2(0.0, 2.2);
    let lvc = ventricle(
        apex,
        apex + v2(-0.5, p.lv_len),
        p.lv_rad,
        p.wall,
        c,
        p.fs,
        p.ls,
    );
    let la = atrium(&lvc, p.la_rad, k.la, 1.1);
    let ao = p.ao_rad * (1.0 + 0.05 * k.aorta);
    let h_right = lvc.hinges[1];
    let root0 = h_right + v2(-1.0, -1.4);
    let root1 = h_right + v2(0.2, 0.5);
    let root2 = h_right + v2(2.3, 4.0);
    sc.ell(lvc.pericardium(0.2), lv.peri * 0.8);
    sc.ell(lvc.myo, lv.myo);
    sc.ell(la.grow(0.3), lv.myo);
    sc.polyline(&[root1, root2], ao + 0.28, lv.wall);
    sc.ell(lvc.blood, lv.blood);
    sc.ell(la, lv.blood);
    sc.polyline(&[root0, root1, root2], ao, lv.blood);
    let d = (root2 - root1).norm();
    let hinge = root1 + d * 0.5;
    leaflets(
        &mut sc,
        [
            hinge + d.perp() * (ao * 0.97),
            hinge - d.perp() * (ao * 0.97),
        ],
        d,
        k.av,
        [1.3, 1.3],
        0.09,
        lv.valve,
    );
    // Mitral valve: anterior leaflet hinged at the aortic-mitral continuity.
    let mv_right = lvc.hinges[0].lerp(h_right, 0.62);
    leaflets(
        &mut sc,
        [lvc.hinges[0], mv_right],
        lvc.axis * -1.0,
        k.mv,
        [1.4, 2.1],
        0.12,
        lv.valve,
    );
    sc.disc(lvc.hinges[0], 0.25, lv.wall);
    sc.disc(mv_right, 0.22, lv.wall);
    sc
}

/// Suprasternal long axis: the aortic arch across the top with its three branches rising to
/// the neck, the right pulmonary artery in cross-section under the arch, and the LA deeper.
fn suprasternal(mut sc: Scene, p: &Patient, k: &Cardiac) -> Scene {
    let lv = p.lv;
    chest_wall(&mut sc, &lv, 0.9);
    let ao = 0.66 * p.ao_rad * (1.0 + 0.08 * k.aorta);
    let centre = v2(0.4, 7.2);
    let radius = 3.7;
    // Ascending aorta from the heart (lower left), the arch, the descending aorta (right).
    let mut arch = vec![v2(-2.4, 11.2)];
    arch.extend((0..=14).map(|i| centre + V2::dir(165.0 + 15.0 * i as f32) * radius));
    arch.push(v2(4.0, 14.0));
    let branches: Vec<[V2; 2]> = [(246.0f32, -1.2), (268.0, -0.2), (290.0, 0.9)]
        .iter()
        .map(|&(deg, lean)| {
            let start = centre + V2::dir(deg) * radius;
            [start, v2(start.x + lean, 0.6)]
        })
        .collect();
    let rpa = centre + v2(0.1, 0.9);
    let laf = 0.82 + 0.18 * k.la;
    let la = Ell::at(v2(0.6, 10.9), 0.0, 2.1 * laf, 1.1 * laf);
    sc.ell(la.grow(0.3), lv.myo);
    for (i, b) in branches.iter().enumerate() {
        let r = if i == 0 { 0.5 } else { 0.4 };
        sc.polyline(b, r + 0.2, lv.wall);
    }
    sc.polyline(&arch, ao + 0.28, lv.wall);
    sc.disc(rpa, 0.75 + 0.25, lv.wall);
    for (i, b) in branches.iter().enumerate() {
        let r = if i == 0 { 0.5 } else { 0.4 };
        sc.polyline(b, r, lv.blood);
    }
    sc.polyline(&arch, ao, lv.blood);
    sc.disc(rpa, 0.75, lv.blood);
    sc.ell(la, lv.blood);
    sc
}

/// Subcostal four chamber: liver in the near field, then the four chambers lying across the
/// screen with the RV nearest the liver, the apex to the right and the atria to the left.
fn subcostal(mut sc: Scene, p: &Patient, k: &Cardiac) -> Scene {
    let lv = p.lv;
    let liver = Ell::at(v2(0.0, 1.0), -6.0, 10.0, 5.6);
    sc.ell(liver.grow(0.35), lv.peri * 0.85);
    sc.ell(liver, lv.liver);
    // Hepatic veins.
    sc.capsule(v2(-4.0, 4.8), v2(-1.6, 2.4), 0.35, lv.blood);
    sc.disc(v2(1.8, 2.6), 0.4, lv.blood);
    sc.disc(v2(-0.6, 4.4), 0.3, lv.blood);
    sc.place = Placement {
        cos: 75f32.to_radians().cos(),
        sin: 75f32.to_radians().sin(),
        from: v2(0.3, 8.0),
        to: v2(0.8, 11.6),
    };
    four_chambers(&mut sc, p, k, false);
    sc.place = Placement::IDENTITY;
    sc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ventricle_is_largest_at_end_diastole_and_smallest_at_end_systole() {
        let lv: Vec<f32> = (0..100).map(|i| cardiac(i as f64 / 100.0).lv).collect();
        let (imax, _) = lv
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
        let (imin, _) = lv
            .iter()
            .enumerate()
            .fold((0, f32::MAX), |b, (i, &v)| if v < b.1 { (i, v) } else { b });
        assert_eq!(imax, 0);
        assert!((35..=40).contains(&imin), "min at {imin}");
        // Smooth: no jump larger than a tenth of the range between 1% phase steps.
        for w in lv.windows(2) {
            assert!((w[1] - w[0]).abs() < 0.1);
        }
        assert!((cardiac(0.999).lv - 1.0).abs() < 0.01);
    }

    #[test]
    fn valves_open_at_their_times() {
        let k = |x| cardiac(x);
        assert!(
            k(0.2).av > 0.9 && k(0.2).mv < 0.01,
            "aortic open in systole"
        );
        assert!(
            k(0.5).mv > 0.9 && k(0.5).av < 0.01,
            "mitral open in early diastole"
        );
        assert!(
            k(0.0).mv < 0.01 && k(0.0).av < 0.01,
            "both closed at the R-peak"
        );
        assert!(k(0.88).mv > 0.5, "A wave reopens the mitral valve");
    }

    #[test]
    fn capsule_and_ellipse_distances() {
        let mut sc = Scene::new(0.0, Vec::new());
        sc.capsule(v2(0.0, 0.0), v2(2.0, 0.0), 0.5, 1.0);
        sc.ell(Ell::at(v2(0.0, 0.0), 0.0, 2.0, 1.0), 1.0);
        let cap = sc.prims[0].shape;
        assert!((cap.distance(1.0, 1.5) - 1.0).abs() < 1e-6);
        assert!((cap.distance(-1.0, 0.0) - 0.5).abs() < 1e-6);
        let ell = sc.prims[1].shape;
        assert!(ell.distance(2.1, 0.0) > 0.09 && ell.distance(2.1, 0.0) < 0.11);
        assert!(ell.distance(0.0, 0.9) < -0.09 && ell.distance(0.0, 0.9) > -0.11);
        assert!(ell.distance(0.0, 0.0) < -0.5);
    }
}
