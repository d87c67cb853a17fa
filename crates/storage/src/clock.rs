use std::time::{SystemTime, UNIX_EPOCH};

/// A commit timestamp, laid out as MongoDB's BSON Timestamp: seconds in the high 32 bits and an
/// increment in the low 32 bits. One monotonic clock hands these out, so the same value can serve
/// as a commit's version, `operationTime`, `$clusterTime` and (later) the oplog `ts`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub const ZERO: Timestamp = Timestamp(0);

    pub fn seconds(self) -> u32 {
        (self.0 >> 32) as u32
    }

    pub fn increment(self) -> u32 {
        self.0 as u32
    }

    pub fn to_bson(self) -> bson::Timestamp {
        bson::Timestamp {
            time: self.seconds(),
            increment: self.increment(),
        }
    }

    pub fn from_bson(ts: bson::Timestamp) -> Timestamp {
        Timestamp(((ts.time as u64) << 32) | ts.increment as u64)
    }

    /// The next timestamp after `self`, never earlier than the wall clock's second: commits stay
    /// strictly ordered even if the wall clock steps backwards.
    pub(crate) fn next_after(self) -> Timestamp {
        let wall_seconds = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            .min(u32::MAX as u64);
        let wall = Timestamp((wall_seconds << 32) | 1);
        let next = if wall > self {
            wall
        } else {
            Timestamp(self.0 + 1)
        };
        debug_assert!(next > self);
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_strictly_increasing_and_near_wall_clock() {
        let mut t = Timestamp::ZERO;
        for _ in 0..1000 {
            let n = t.next_after();
            assert!(n > t);
            t = n;
        }
        assert!(t.seconds() > 1_700_000_000);
    }

    #[test]
    fn clock_ahead_of_wall_increments() {
        let far = Timestamp((u32::MAX as u64) << 32);
        assert_eq!(far.next_after(), Timestamp(far.0 + 1));
    }
}
