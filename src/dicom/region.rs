//! The image region of an ultrasound export: the Sequence of Ultrasound Regions (0018,6011)
//! says where on the screen capture the 2D image lies, so replay can crop to it instead of
//! guessing from the pixels that move (which a scrolling ECG trace or M-mode strip fools).

use crate::preprocess::Rect;

/// One item of the Sequence of Ultrasound Regions, as the file gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsRegion {
    /// Region Spatial Format (0018,6012): 1 is a 2D image, 2 M-mode, 3 spectral, 4 waveform.
    pub spatial_format: u16,
    /// Region Data Type (0018,6014): 1 is tissue, 2 colour flow, ...
    pub data_type: u16,
    /// Region Location Min X0 (0018,6018), column of the left edge.
    pub min_x: u32,
    /// Region Location Min Y0 (0018,601A), row of the top edge.
    pub min_y: u32,
    /// Region Location Max X1 (0018,601C), column of the right edge (inclusive).
    pub max_x: u32,
    /// Region Location Max Y1 (0018,601E), row of the bottom edge (inclusive).
    pub max_y: u32,
}

/// Region Spatial Format of a 2D image, the only kind the view classifier was trained on.
const SPATIAL_2D: u16 = 1;

/// The crop for replay: the largest 2D region that lies within the `width` x `height` frame.
/// A region reaching past the frame is not used: it means the export was resized or cropped
/// after acquisition, so its coordinates no longer describe these pixels. `None` when no 2D
/// region fits, and preprocessing then finds the region from the pixels itself.
pub fn image_region(regions: &[UsRegion], width: u32, height: u32) -> Option<Rect> {
    regions
        .iter()
        .filter(|r| r.spatial_format == SPATIAL_2D)
        .filter_map(|r| inside(r, width, height))
        .max_by_key(|rect| {
            (
                u64::from(rect.width) * u64::from(rect.height),
                rect.x,
                rect.y,
            )
        })
}

/// `region` as a rectangle, or `None` when it is inverted or not wholly inside the frame.
fn inside(region: &UsRegion, width: u32, height: u32) -> Option<Rect> {
    if region.min_x > region.max_x || region.min_y > region.max_y {
        return None;
    }
    if region.max_x >= width || region.max_y >= height {
        return None;
    }
    Some(Rect {
        x: region.min_x,
        y: region.min_y,
        width: region.max_x - region.min_x + 1,
        height: region.max_y - region.min_y + 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(spatial_format: u16, x0: u32, y0: u32, x1: u32, y1: u32) -> UsRegion {
        UsRegion {
            spatial_format,
            data_type: 1,
            min_x: x0,
            min_y: y0,
            max_x: x1,
            max_y: y1,
        }
    }

    #[test]
    fn picks_the_largest_2d_region_inside_the_frame() {
        let regions = [
            region(1, 120, 60, 799, 349),
            region(4, 176, 0, 743, 57),
            region(1, 0, 0, 9, 9),
        ];
        assert_eq!(
            image_region(&regions, 800, 350),
            Some(Rect {
                x: 120,
                y: 60,
                width: 680,
                height: 290
            })
        );
        // Past the edge (a resized export): not trusted.
        assert_eq!(
            image_region(&[region(1, 120, 60, 800, 518)], 800, 350),
            None
        );
    }

    #[test]
    fn no_usable_region_gives_none() {
        assert_eq!(image_region(&[], 10, 10), None);
        assert_eq!(image_region(&[region(4, 0, 0, 5, 5)], 10, 10), None);
        assert_eq!(image_region(&[region(1, 20, 0, 30, 5)], 10, 10), None);
        assert_eq!(image_region(&[region(1, 5, 5, 2, 2)], 10, 10), None);
    }
}
