//! What the driver really takes for an allocation, as measured on an H100 with driver 580
//! (`shared/measurements/h100-driver-footprint.txt`):
//! - 2 MiB and up is rounded up to whole 2 MiB pages: 2 MiB+1 takes 4 MiB, 3 MiB takes 4 MiB, 10 MiB+7 takes 12 MiB;
//! - under 2 MiB, allocations are packed into shared 2 MiB pages: 200 × 64 KiB took 7 pages (32 a page),
//!   200 × 1 byte took one.
//!
//! Packed allocations are charged by the pages they touch ([`crate::accounting::pages`]): a page is charged while any
//! live packed allocation lies in it, which is what the driver must keep backed, fragmentation included.

/// The driver's page for device memory and the VMM granularity on the H100.
pub const PAGE: u64 = 2 << 20;

/// How one allocation is charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Charge {
    /// Whole pages of its own; the bytes are a multiple of [`PAGE`].
    Pages(u64),
    /// This many bytes inside pages shared with other small allocations; charged through the pages it
    /// touches once its address is known.
    Packed(u64),
}

impl Charge {
    /// The charge for a `cuMemAlloc`-style request of `bytes`.
    pub fn for_request(bytes: u64) -> Charge {
        if bytes < PAGE {
            Charge::Packed(bytes)
        } else {
            Charge::Pages(round_up_pages(bytes))
        }
    }

    /// Memory that always comes in whole pages (VMM handles, arrays, pools).
    pub fn pages(bytes: u64) -> Charge {
        Charge::Pages(round_up_pages(bytes))
    }

    /// The most this charge can cost: for a packed allocation, every page its bytes could straddle,
    /// should none of them be in use yet. Reserved before the driver says where it put them.
    pub fn worst_case(self) -> u64 {
        match self {
            Charge::Pages(bytes) => bytes,
            Charge::Packed(bytes) => (bytes.div_ceil(PAGE) + 1).saturating_mul(PAGE),
        }
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
        assert_eq!(
            Charge::for_request(2 * MIB - 1),
            Charge::Packed(2 * MIB - 1)
        );
        assert_eq!(Charge::for_request(64 << 10), Charge::Packed(64 << 10));
    }

    #[test]
    fn worst_cases() {
        assert_eq!(Charge::Packed(1).worst_case(), 4 * MIB);
        assert_eq!(Charge::Packed(2 * MIB - 1).worst_case(), 4 * MIB);
        assert_eq!(Charge::Pages(6 * MIB).worst_case(), 6 * MIB);
    }

    #[test]
    fn pages_saturate() {
        assert_eq!(round_up_pages(u64::MAX), u64::MAX);
        assert_eq!(round_up_pages(PAGE + 1), 2 * PAGE);
    }
}
