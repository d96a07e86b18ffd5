//! The program's per-CPU counters, summed.

use std::fmt;

use ackgate_common::wire::{Counter, COUNTERS};

/// Summed per-CPU counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub [u64; COUNTERS]);

impl Counters {
    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }

    /// Element-wise `self - earlier`.
    pub fn since(&self, earlier: &Counters) -> Counters {
        let mut d = [0; COUNTERS];
        for (i, v) in d.iter_mut().enumerate() {
            *v = self.0[i].wrapping_sub(earlier.0[i]);
        }
        Counters(d)
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for c in Counter::ALL {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{}={}", c.name(), self.get(c))?;
        }
        Ok(())
    }
}
