//! Cells: a quadtree over a rectangle of the plane (longitude/latitude degrees for `2dsphere`,
//! the index's `min`/`max` square for `2d`), numbered so that a cell's descendants are one
//! contiguous range of numbers, as S2 numbers its cells.
//!
//! A cell at level `l` (0 = the whole frame, [`MAX_LEVEL`] = the finest) is `(i, j)` in a
//! `2^l x 2^l` grid. Its number interleaves the bits of `i` and `j` (Z-order), appends a 1 and
//! shifts left so that every number has `2 * (MAX_LEVEL - l)` trailing zeros: the descendants of
//! a cell are exactly the numbers in `range_min()..=range_max()`, and its ancestors are found by
//! moving that lowest 1 bit up. Numbers are below 2^61, so they fit an `i64` index key.
//!
//! Invariant: pure arithmetic; every coordinate, finite or not, maps to some cell (clamped into
//! the frame), so no input can panic here.

use geo::{Coord, Rect};

/// The finest level: 2^30 cells a side (about 4 cm of longitude at the equator).
pub const MAX_LEVEL: u8 = 30;

/// The rectangle a quadtree divides.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Frame {
    pub min: Coord<f64>,
    pub max: Coord<f64>,
}

/// The `2dsphere` frame: longitude x latitude in degrees.
pub const SPHERE: Frame = Frame {
    min: Coord {
        x: -180.0,
        y: -90.0,
    },
    max: Coord { x: 180.0, y: 90.0 },
};

/// One cell's number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cell(pub u64);

impl Frame {
    /// A square frame `[min, max]` on both axes (a `2d` index's bounds).
    pub fn square(min: f64, max: f64) -> Frame {
        Frame {
            min: Coord { x: min, y: min },
            max: Coord { x: max, y: max },
        }
    }

    /// The cell at `level` holding `p` (clamped into the frame).
    pub fn cell_at(&self, p: Coord<f64>, level: u8) -> Cell {
        let level = level.min(MAX_LEVEL);
        let n = 1u64 << level;
        let scale = |v: f64, lo: f64, hi: f64| -> u64 {
            let t = (v - lo) / (hi - lo);
            if t.is_nan() || t <= 0.0 {
                0
            } else {
                ((t * n as f64) as u64).min(n - 1)
            }
        };
        let i = scale(p.x, self.min.x, self.max.x);
        let j = scale(p.y, self.min.y, self.max.y);
        Cell::from_ij(level, i, j)
    }

    /// The rectangle of `cell`.
    pub fn rect(&self, cell: Cell) -> Rect<f64> {
        let (level, i, j) = cell.ij();
        let n = (1u64 << level) as f64;
        let w = (self.max.x - self.min.x) / n;
        let h = (self.max.y - self.min.y) / n;
        let x = self.min.x + i as f64 * w;
        let y = self.min.y + j as f64 * h;
        Rect::new(Coord { x, y }, Coord { x: x + w, y: y + h })
    }

    /// The cell's side along x, in the frame's units.
    pub fn width(&self, level: u8) -> f64 {
        (self.max.x - self.min.x) / (1u64 << level.min(MAX_LEVEL)) as f64
    }
}

fn spread(v: u64) -> u64 {
    let mut x = v & 0xFFFF_FFFF;
    x = (x | (x << 16)) & 0x0000_FFFF_0000_FFFF;
    x = (x | (x << 8)) & 0x00FF_00FF_00FF_00FF;
    x = (x | (x << 4)) & 0x0F0F_0F0F_0F0F_0F0F;
    x = (x | (x << 2)) & 0x3333_3333_3333_3333;
    (x | (x << 1)) & 0x5555_5555_5555_5555
}

fn compact(v: u64) -> u64 {
    let mut x = v & 0x5555_5555_5555_5555;
    x = (x | (x >> 1)) & 0x3333_3333_3333_3333;
    x = (x | (x >> 2)) & 0x0F0F_0F0F_0F0F_0F0F;
    x = (x | (x >> 4)) & 0x00FF_00FF_00FF_00FF;
    x = (x | (x >> 8)) & 0x0000_FFFF_0000_FFFF;
    (x | (x >> 16)) & 0xFFFF_FFFF
}

impl Cell {
    pub fn from_ij(level: u8, i: u64, j: u64) -> Cell {
        let level = level.min(MAX_LEVEL);
        let pos = (spread(i) << 1) | spread(j);
        Cell(((pos << 1) | 1) << (2 * (MAX_LEVEL - level) as u32))
    }

    /// The whole frame.
    pub fn root() -> Cell {
        Cell::from_ij(0, 0, 0)
    }

    fn lsb(self) -> u64 {
        self.0 & self.0.wrapping_neg()
    }

    pub fn level(self) -> u8 {
        MAX_LEVEL - (self.0.trailing_zeros().min(2 * MAX_LEVEL as u32) / 2) as u8
    }

    /// `(level, i, j)`.
    pub fn ij(self) -> (u8, u64, u64) {
        let level = self.level();
        let pos = self.0 >> (2 * (MAX_LEVEL - level) as u32 + 1);
        (level, compact(pos >> 1), compact(pos))
    }

    /// The smallest number of a descendant (or the cell itself).
    pub fn range_min(self) -> u64 {
        self.0 - self.lsb() + 1
    }

    /// The largest number of a descendant (or the cell itself).
    pub fn range_max(self) -> u64 {
        self.0 + self.lsb() - 1
    }

    pub fn contains(self, other: Cell) -> bool {
        (self.range_min()..=self.range_max()).contains(&other.0)
    }

    /// The ancestor at `level` (the cell itself at its own level or finer).
    pub fn parent(self, level: u8) -> Cell {
        if level >= self.level() {
            return self;
        }
        let (l, i, j) = self.ij();
        let shift = l - level;
        Cell::from_ij(level, i >> shift, j >> shift)
    }

    pub fn children(self) -> [Cell; 4] {
        let (l, i, j) = self.ij();
        if l >= MAX_LEVEL {
            return [self; 4];
        }
        let (i, j) = (i << 1, j << 1);
        [
            Cell::from_ij(l + 1, i, j),
            Cell::from_ij(l + 1, i, j + 1),
            Cell::from_ij(l + 1, i + 1, j),
            Cell::from_ij(l + 1, i + 1, j + 1),
        ]
    }

    /// Every strict ancestor, coarsest first.
    pub fn ancestors(self) -> impl Iterator<Item = Cell> {
        (0..self.level()).map(move |l| self.parent(l))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descendants_are_one_range_and_ancestors_contain() {
        let leaf = SPHERE.cell_at(Coord { x: 2.35, y: 48.85 }, MAX_LEVEL);
        assert_eq!(leaf.level(), MAX_LEVEL);
        for level in 0..MAX_LEVEL {
            let a = leaf.parent(level);
            assert_eq!(a.level(), level);
            assert!(a.contains(leaf));
            assert!(SPHERE.rect(a).min().x <= 2.35 && SPHERE.rect(a).max().x >= 2.35);
        }
        let root = Cell::root();
        assert_eq!(root.range_min(), 1);
        assert!(root.range_max() < 1 << 61);
        let kids = root.children();
        assert!(kids.iter().all(|k| root.contains(*k) && k.level() == 1));
        assert!(!kids[0].contains(kids[1]));
        assert!(kids[0].range_max() < kids[1].range_min());
    }

    #[test]
    fn hostile_coordinates_clamp() {
        for p in [f64::NAN, f64::INFINITY, -1e300, 1e300] {
            let c = SPHERE.cell_at(Coord { x: p, y: p }, 12);
            assert_eq!(c.level(), 12);
        }
    }
}
