//! Coverings: the cells of a frame that together contain a region, and the ranges of cell
//! numbers an index scan reads to find every indexed shape that may touch a region.
//!
//! Invariant: a covering is a *superset* of its region (a cell is dropped only when the region
//! certainly misses it), so scans built from coverings never lose a match; the filter decides.
//! Work is bounded: at most `max_cells` cells are kept per level, so covering costs
//! O(levels x cells x vertices) whatever the region.

use geo::{BoundingRect, Coord, Geometry, Intersects, Rect};

use crate::cell::{Cell, Frame, MAX_LEVEL};

/// Cells a stored shape's covering may have: each is one index key.
pub const INDEX_CELLS: usize = 16;
/// Cells a query region's covering may have: each is one range of the scan.
pub const QUERY_CELLS: usize = 24;

/// The cells covering whatever `touches` admits, refined level by level while the next level
/// stays within `max_cells`, at most to `max_level`.
pub fn cover(
    frame: &Frame,
    max_cells: usize,
    max_level: u8,
    touches: &dyn Fn(&Rect<f64>) -> bool,
) -> Vec<Cell> {
    let mut frontier = vec![Cell::root()];
    let mut level = 0;
    loop {
        frontier.retain(|c| touches(&frame.rect(*c)));
        if frontier.is_empty() || level >= max_level.min(MAX_LEVEL) {
            return frontier;
        }
        if frontier.len() * 4 > max_cells {
            return frontier;
        }
        frontier = frontier.iter().flat_map(|c| c.children()).collect();
        level += 1;
    }
}

/// The covering of a shape: one finest cell for a point, else up to `max_cells` cells.
pub fn cover_shape(
    frame: &Frame,
    geom: &Geometry<f64>,
    max_cells: usize,
    max_level: u8,
) -> Vec<Cell> {
    if let Geometry::Point(p) = geom {
        return vec![frame.cell_at(p.0, max_level)];
    }
    let Some(bbox) = geom.bounding_rect() else {
        return Vec::new();
    };
    cover(frame, max_cells, max_level, &|r| {
        r.intersects(&bbox) && r.intersects(geom)
    })
}

/// The covering of the union of some rectangles (the bounding boxes of a circle).
pub fn cover_rects(
    frame: &Frame,
    rects: &[Rect<f64>],
    max_cells: usize,
    max_level: u8,
) -> Vec<Cell> {
    cover(frame, max_cells, max_level, &|r| {
        rects.iter().any(|b| r.intersects(b))
    })
}

/// Inclusive ranges of cell numbers to scan for shapes touching the region `cells` cover:
/// each cell's descendants (shapes indexed inside it) and each ancestor as a single number
/// (larger shapes indexed by a coarser cell). Sorted, merged.
pub fn scan_ranges(cells: &[Cell]) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for c in cells {
        ranges.push((c.range_min(), c.range_max()));
        ranges.extend(c.ancestors().map(|a| (a.0, a.0)));
    }
    merge(ranges)
}

/// Sorts and merges overlapping or adjacent ranges.
pub fn merge(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// `ranges` minus `done` (both sorted and merged): what a widening search has not read yet.
pub fn subtract(ranges: &[(u64, u64)], done: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(lo, hi) in ranges {
        let mut start = lo;
        for &(dlo, dhi) in done {
            if dhi < start || dlo > hi {
                continue;
            }
            if dlo > start {
                out.push((start, dlo - 1));
            }
            start = dhi.saturating_add(1);
            if start > hi {
                break;
            }
        }
        if start <= hi && start >= lo {
            out.push((start, hi));
        }
    }
    out
}

/// The longitude/latitude boxes (two when it crosses the antimeridian) holding the spherical
/// cap of `radius` radians around `center`.
pub fn cap_boxes(center: Coord<f64>, radius: f64) -> Vec<Rect<f64>> {
    let r_deg = radius.to_degrees() * (1.0 + 1e-9) + 1e-9;
    let lat_lo = center.y - r_deg;
    let lat_hi = center.y + r_deg;
    let full = |lo: f64, hi: f64| {
        vec![Rect::new(
            Coord {
                x: -180.0,
                y: lo.max(-90.0),
            },
            Coord {
                x: 180.0,
                y: hi.min(90.0),
            },
        )]
    };
    if radius >= std::f64::consts::FRAC_PI_2 || lat_lo <= -90.0 || lat_hi >= 90.0 {
        return full(lat_lo, lat_hi);
    }
    let dlon = (radius.sin() / center.y.to_radians().cos())
        .asin()
        .to_degrees()
        * (1.0 + 1e-9)
        + 1e-9;
    if !dlon.is_finite() || dlon >= 180.0 {
        return full(lat_lo, lat_hi);
    }
    let (lo, hi) = (center.x - dlon, center.x + dlon);
    let span = |x0: f64, x1: f64| Rect::new(Coord { x: x0, y: lat_lo }, Coord { x: x1, y: lat_hi });
    let mut out = vec![span(lo.max(-180.0), hi.min(180.0))];
    if lo < -180.0 {
        out.push(span(lo + 360.0, 180.0));
    }
    if hi > 180.0 {
        out.push(span(-180.0, hi - 360.0));
    }
    out
}

#[cfg(test)]
mod tests {
    use geo::{Contains, LineString, Point, Polygon};

    use super::*;
    use crate::cell::SPHERE;

    #[test]
    fn a_covering_contains_its_shape() {
        let poly = Polygon::new(
            LineString::from(vec![
                (2.0, 48.0),
                (3.0, 48.0),
                (3.0, 49.5),
                (2.0, 49.0),
                (2.0, 48.0),
            ]),
            vec![],
        );
        let cells = cover_shape(
            &SPHERE,
            &Geometry::Polygon(poly.clone()),
            INDEX_CELLS,
            MAX_LEVEL,
        );
        assert!(!cells.is_empty() && cells.len() <= INDEX_CELLS);
        for x in 0..=10 {
            for y in 0..=15 {
                let p = Point::new(2.0 + x as f64 * 0.1, 48.0 + y as f64 * 0.1);
                if poly.contains(&p) {
                    let leaf = SPHERE.cell_at(p.0, MAX_LEVEL);
                    assert!(cells.iter().any(|c| c.contains(leaf)), "{p:?} not covered");
                }
            }
        }
    }

    #[test]
    fn scan_ranges_reach_points_inside_and_shapes_around() {
        let region = cover_rects(
            &SPHERE,
            &[Rect::new((10.0, 10.0), (10.5, 10.5))],
            QUERY_CELLS,
            MAX_LEVEL,
        );
        let ranges = scan_ranges(&region);
        let inside = SPHERE.cell_at(Coord { x: 10.2, y: 10.3 }, MAX_LEVEL).0;
        assert!(ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&inside)));
        let outside = SPHERE.cell_at(Coord { x: 50.0, y: 10.3 }, MAX_LEVEL).0;
        assert!(!ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&outside)));
        // A big shape indexed by a coarse cell holding the region is found by its ancestor.
        let coarse = SPHERE.cell_at(Coord { x: 10.2, y: 10.3 }, 3).0;
        assert!(ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&coarse)));
    }

    #[test]
    fn subtracting_ranges() {
        assert_eq!(
            subtract(&[(0, 10)], &[(2, 3), (5, 5)]),
            vec![(0, 1), (4, 4), (6, 10)]
        );
        assert_eq!(subtract(&[(0, 10)], &[(0, 10)]), vec![]);
        assert_eq!(merge(vec![(5, 6), (0, 4), (8, 9)]), vec![(0, 6), (8, 9)]);
    }

    #[test]
    fn cap_boxes_cross_the_antimeridian_and_poles() {
        assert_eq!(cap_boxes(Coord { x: 179.9, y: 0.0 }, 0.01).len(), 2);
        let polar = cap_boxes(Coord { x: 0.0, y: 89.9 }, 0.01);
        assert_eq!(polar.len(), 1);
        assert_eq!(polar[0].min().x, -180.0);
    }
}
