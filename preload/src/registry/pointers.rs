//! Device pointers: every one we charged, by address, with how it is charged; and the shared pages that
//! hold live packed allocations. The allocation hooks record into it and the free hooks read it back.

use vramcap_core::accounting::charge::Charge;
use vramcap_core::accounting::pages::PageSet;
use vramcap_core::registry::addr_map::{AddrMap, Pack};

/// How a device pointer's memory is charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// Its own charge (`cuMemAlloc`, managed, pitch); `Packed` ones are charged through [`PAGES`].
    Own(Charge),
    /// Part of a stream-ordered pool, which is charged as a whole.
    Pool(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PtrRecord {
    pub dev: i32,
    pub backing: Backing,
    pub requested: u64,
}

/// A record in two words: `requested`, and `device << 58 | kind << 56 | amount` (a charge in bytes or a
/// pool handle; both below 2^56, the top of a 57-bit address space).
impl Pack for PtrRecord {
    fn pack(self) -> [u64; 2] {
        let (kind, amount) = match self.backing {
            Backing::Own(Charge::Pages(b)) => (0, b),
            Backing::Own(Charge::Packed(b)) => (1, b),
            Backing::Pool(pool) => (2, pool as u64),
        };
        let dev = (self.dev as u64) & 0x3f;
        [self.requested, dev << 58 | kind << 56 | (amount & AMOUNT)]
    }

    fn unpack([requested, w]: [u64; 2]) -> PtrRecord {
        let amount = w & AMOUNT;
        let backing = match (w >> 56) & 3 {
            0 => Backing::Own(Charge::Pages(amount)),
            1 => Backing::Own(Charge::Packed(amount)),
            _ => Backing::Pool(amount as usize),
        };
        PtrRecord {
            dev: (w >> 58) as i32,
            backing,
            requested,
        }
    }
}

const AMOUNT: u64 = (1 << 56) - 1;

/// Every device pointer we charged, by address.
pub static PTRS: AddrMap<PtrRecord> = AddrMap::new();

/// The shared pages that hold live packed allocations.
pub static PAGES: PageSet = PageSet::new();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_pack_and_unpack_unchanged() {
        for backing in [
            Backing::Own(Charge::Pages(80 << 30)),
            Backing::Own(Charge::Packed(4096)),
            Backing::Pool(0x7fff_dead_b000),
        ] {
            let r = PtrRecord {
                dev: 63,
                backing,
                requested: u64::MAX - 5,
            };
            assert_eq!(PtrRecord::unpack(r.pack()), r);
        }
    }

    #[test]
    fn every_device_and_the_largest_amounts_survive_packing() {
        // The device and the kind share the second word with the amount: none may spill into another.
        for dev in 0..vramcap_core::accounting::ledger::MAX_DEVICES as i32 {
            for backing in [
                Backing::Own(Charge::Pages(AMOUNT)),
                Backing::Own(Charge::Packed(AMOUNT)),
                Backing::Pool(AMOUNT as usize),
                Backing::Own(Charge::Pages(0)),
            ] {
                let r = PtrRecord {
                    dev,
                    backing,
                    requested: 0,
                };
                assert_eq!(PtrRecord::unpack(r.pack()), r, "device {dev}");
            }
        }
    }
}
