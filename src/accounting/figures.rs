//! One process's figures on one device, spelled once: the ledger's snapshot gives them, a slot of the
//! shared segment carries them (`shm::VramcapDevice`, converted in one place), and `vramcap status` shows
//! them, in the table and as the `status --json` device fields (whose names the `serde` attributes give).

#[cfg(feature = "cli")]
use serde::{Serialize, Serializer};

/// One process's figures on one device. Sizes are bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(Serialize))]
pub struct DeviceFigures {
    /// What the driver holds for the process here, context included.
    #[cfg_attr(feature = "cli", serde(rename = "charged_bytes"))]
    pub charged: u64,
    /// What the process asked for.
    #[cfg_attr(feature = "cli", serde(rename = "requested_bytes"))]
    pub requested: u64,
    /// `None` (JSON `null`): counted, not capped.
    #[cfg_attr(feature = "cli", serde(rename = "cap_bytes"))]
    pub cap: Option<u64>,
    #[cfg_attr(feature = "cli", serde(rename = "peak_bytes"))]
    pub peak: u64,
    /// The context's share of `charged`.
    #[cfg_attr(feature = "cli", serde(rename = "context_bytes"))]
    pub context: u64,
    pub allocations: u64,
    pub refusals: u64,
    /// The last refused request, 0 before any (JSON `null`: a refusal is never of 0 bytes, nor at time 0).
    #[cfg_attr(feature = "cli", serde(serialize_with = "zero_as_null"))]
    pub last_refused_bytes: u64,
    #[cfg_attr(feature = "cli", serde(serialize_with = "zero_as_null"))]
    pub last_refused_unix_ms: u64,
}

impl DeviceFigures {
    /// What the process may still take: the cap minus what it holds.
    pub fn headroom(&self) -> Option<u64> {
        self.cap.map(|c| c.saturating_sub(self.charged))
    }

    /// The last refusal's size, `None` before any.
    pub fn last_refused(&self) -> Option<u64> {
        (self.last_refused_bytes != 0).then_some(self.last_refused_bytes)
    }
}

#[cfg(feature = "cli")]
fn zero_as_null<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    (*v != 0).then_some(*v).serialize(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headroom_is_what_the_cap_leaves_and_never_underflows() {
        let mut f = DeviceFigures {
            charged: 3 << 30,
            cap: Some(4 << 30),
            ..DeviceFigures::default()
        };
        assert_eq!(f.headroom(), Some(1 << 30));
        f.charged = 5 << 30;
        assert_eq!(f.headroom(), Some(0));
        f.cap = None;
        assert_eq!(f.headroom(), None);
    }

    #[cfg(feature = "cli")]
    #[test]
    fn json_names_are_the_status_schema_s() {
        let f = DeviceFigures {
            charged: 1,
            requested: 2,
            peak: 3,
            context: 4,
            allocations: 5,
            refusals: 6,
            ..DeviceFigures::default()
        };
        let v = serde_json::to_value(f).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "charged_bytes": 1, "requested_bytes": 2, "cap_bytes": null, "peak_bytes": 3,
                "context_bytes": 4, "allocations": 5, "refusals": 6,
                "last_refused_bytes": null, "last_refused_unix_ms": null
            })
        );
        let refused = DeviceFigures {
            cap: Some(7),
            last_refused_bytes: 8,
            last_refused_unix_ms: 9,
            ..f
        };
        let v = serde_json::to_value(refused).unwrap();
        assert_eq!(
            (
                v["cap_bytes"].as_u64(),
                v["last_refused_bytes"].as_u64(),
                v["last_refused_unix_ms"].as_u64()
            ),
            (Some(7), Some(8), Some(9))
        );
    }
}
