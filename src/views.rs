//! The transthoracic views echoview tells apart.
//!
//! Every stage names views through this one enum, so a label never travels as a free-form
//! string: the model manifest, the simulator's truth channel and the published labels all
//! round-trip through [`View::name`] and [`View::from_name`].

use std::fmt;
use std::str::FromStr;

/// One of the 11 standard transthoracic echocardiography views.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum View {
    /// Parasternal long axis.
    Plax,
    /// Parasternal short axis at the level of the great vessels.
    PsaxVes,
    /// Parasternal short axis at the base (mitral valve level).
    PsaxBase,
    /// Parasternal short axis at the mid ventricle (papillary muscles).
    PsaxMid,
    /// Parasternal short axis at the apex.
    PsaxApical,
    /// Apical two-chamber.
    A2c,
    /// Apical three-chamber (apical long axis).
    A3c,
    /// Apical four-chamber.
    A4c,
    /// Apical five-chamber.
    A5c,
    /// Suprasternal notch (aortic arch).
    Suprasternal,
    /// Subcostal four-chamber.
    Subcostal,
}

impl View {
    /// All views in their canonical order, which is also the default class order of a model.
    pub const ALL: [View; 11] = [
        View::Plax,
        View::PsaxVes,
        View::PsaxBase,
        View::PsaxMid,
        View::PsaxApical,
        View::A2c,
        View::A3c,
        View::A4c,
        View::A5c,
        View::Suprasternal,
        View::Subcostal,
    ];

    /// The name used in manifests, session files, JSON output and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            View::Plax => "PLAX",
            View::PsaxVes => "PSAX-ves",
            View::PsaxBase => "PSAX-base",
            View::PsaxMid => "PSAX-mid",
            View::PsaxApical => "PSAX-apical",
            View::A2c => "A2C",
            View::A3c => "A3C",
            View::A4c => "A4C",
            View::A5c => "A5C",
            View::Suprasternal => "Suprasternal",
            View::Subcostal => "Subcostal",
        }
    }

    /// Parses a view name, ignoring ASCII case so `a4c` on a command line works.
    pub fn from_name(name: &str) -> Option<View> {
        View::ALL
            .into_iter()
            .find(|v| v.name().eq_ignore_ascii_case(name.trim()))
    }

    /// Position of this view in [`View::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error for a view name that is not one of the 11 views.
#[derive(Debug, thiserror::Error)]
#[error("unknown view {0:?}; expected one of: {names}", names = View::ALL.map(View::name).join(", "))]
pub struct UnknownView(pub String);

impl FromStr for View {
    type Err = UnknownView;

    fn from_str(s: &str) -> Result<View, UnknownView> {
        View::from_name(s).ok_or_else(|| UnknownView(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_in_canonical_order() {
        for (i, v) in View::ALL.into_iter().enumerate() {
            assert_eq!(v.index(), i);
            assert_eq!(View::from_name(v.name()), Some(v));
            assert_eq!(v.name().to_lowercase().parse::<View>().unwrap(), v);
        }
    }

    #[test]
    fn unknown_name_lists_the_valid_ones() {
        let err = "A6C".parse::<View>().unwrap_err().to_string();
        assert!(err.contains("A6C") && err.contains("PSAX-mid"), "{err}");
    }
}
