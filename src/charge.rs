//! What the driver really takes for an allocation, as measured on an H100 with driver 580
//! (`shared/measurements/h100-driver-footprint.txt`):
//! - 2 MiB and up is rounded up to whole 2 MiB pages: 2 MiB+1 takes 4 MiB, 3 MiB takes 4 MiB, 10 MiB+7 takes 12 MiB;
//! - under 2 MiB, allocations are packed into shared 2 MiB chunks: 200 × 64 KiB took 7 chunks (32 a chunk),
//!   200 × 1 byte took one.
//!
//! We model packing as sizes rounded up to a power of two (at least 512 bytes, the driver's alignment) summed
//! per device, and charge whole chunks for that sum. Fragmentation the model cannot see is caught by the
//! per-process figure the driver reports (the preload's overhead tracker).

/// The driver's page for device memory and the VMM granularity on the H100.
pub const PAGE: u64 = 2 << 20;
/// Smallest slot the packed sub-allocator hands out in our model.
pub const MIN_PACKED: u64 = 512;

/// How one allocation is charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Charge {
    /// Whole pages of its own; the bytes are a multiple of [`PAGE`].
    Pages(u64),
    /// A slot of this many bytes inside a shared chunk.
    Packed(u64),
}

impl Charge {
    /// The charge for a `cuMemAlloc`-style request of `bytes`.
    pub fn for_request(bytes: u64) -> Charge {
        if bytes < PAGE {
            Charge::Packed(bytes.max(MIN_PACKED).next_power_of_two())
        } else {
            Charge::Pages(round_up_pages(bytes))
        }
    }

    /// Memory that always comes in whole pages (VMM handles, arrays, pools).
    pub fn pages(bytes: u64) -> Charge {
        Charge::Pages(round_up_pages(bytes))
    }
}

/// `bytes` rounded up to whole pages, saturating.
pub fn round_up_pages(bytes: u64) -> u64 {
    bytes.div_ceil(PAGE).saturating_mul(PAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn measured_h100_rounding() {
        assert_eq!(Charge::for_request(2 * MIB + 1), Charge::Pages(4 * MIB));
        assert_eq!(Charge::for_request(3 * MIB), Charge::Pages(4 * MIB));
        assert_eq!(Charge::for_request(10 * MIB + 7), Charge::Pages(12 * MIB));
        assert_eq!(Charge::for_request(2 * MIB), Charge::Pages(2 * MIB));
        assert_eq!(Charge::for_request(2 * MIB - 1), Charge::Packed(2 * MIB));
        assert_eq!(Charge::for_request(64 << 10), Charge::Packed(64 << 10));
        assert_eq!(Charge::for_request(1), Charge::Packed(512));
    }

    #[test]
    fn pages_saturate() {
        assert_eq!(round_up_pages(u64::MAX), u64::MAX);
        assert_eq!(round_up_pages(PAGE + 1), 2 * PAGE);
    }
}
