//! The environment contract: `VRAMCAP_LIMIT`, `VRAMCAP_REAL_LIBCUDA`, `VRAMCAP_LOG` and the worker identity
//! that `vramcap-run` sets. Parsed once, at the first CUDA call, never inside `dlsym`.
//!
//! A malformed value is an error that names the variable and the value; the preload library turns it into a
//! refused `cuInit`, so a typo never leaves a program running uncapped.

use crate::log::Level;
use crate::size::{parse_size, Size, SizeError};

pub const ENV_LIMIT: &str = "VRAMCAP_LIMIT";
pub const ENV_REAL_LIBCUDA: &str = "VRAMCAP_REAL_LIBCUDA";
pub const ENV_LOG: &str = "VRAMCAP_LOG";
pub const ENV_NAME: &str = "VRAMCAP_NAME";
pub const ENV_PRIORITY: &str = "VRAMCAP_PRIORITY";
pub const ENV_CONTEXT_BYTES: &str = "VRAMCAP_CONTEXT_BYTES";
pub const ENV_NVML: &str = "VRAMCAP_NVML";

/// What a CUDA context costs before it is measured: an H100 with driver 580 took 527 MiB for a bare context
/// (`shared/measurements/h100-driver-footprint.txt`). Charged at context creation, then replaced by the
/// per-process figure the driver reports (see the preload's `overhead` module).
pub const DEFAULT_CONTEXT_ESTIMATE: u64 = 512 << 20;

/// How a per-device entry names its device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceKey {
    /// CUDA ordinal as the process sees it (after `CUDA_VISIBLE_DEVICES`).
    Ordinal(u32),
    /// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, stored lower-case.
    Uuid(String),
}

#[derive(Debug, Clone, PartialEq, Default)]
pub enum Limit {
    /// Count, but do not cap.
    #[default]
    Unset,
    /// One cap for every device.
    All(Size),
    /// Caps for the named devices; devices not named are counted but not capped.
    PerDevice(Vec<(DeviceKey, Size)>),
}

impl Limit {
    /// The cap for the device with this ordinal and UUID (`GPU-…`), if any.
    pub fn for_device(&self, ordinal: u32, uuid: &str) -> Option<Size> {
        match self {
            Limit::Unset => None,
            Limit::All(size) => Some(*size),
            Limit::PerDevice(entries) => entries
                .iter()
                .find(|(key, _)| match key {
                    DeviceKey::Ordinal(o) => *o == ordinal,
                    DeviceKey::Uuid(u) => u.eq_ignore_ascii_case(uuid),
                })
                .map(|(_, size)| *size),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?} is invalid: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub limit: Limit,
    pub real_libcuda: Option<String>,
    pub log: Level,
    pub context_estimate: u64,
    /// Measure context memory through NVML (`VRAMCAP_NVML=off` keeps the estimate instead).
    pub nvml: bool,
    pub name: Option<String>,
    pub priority: i32,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|var| std::env::var_os(var).map(|v| v.to_string_lossy().into_owned()))
    }

    /// Reads the variables through `lookup`, so tests need not touch the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let invalid = |var: &'static str, value: &str, reason: String| ConfigError {
            var,
            value: value.to_string(),
            reason,
        };
        let limit = match lookup(ENV_LIMIT) {
            None => Limit::Unset,
            Some(v) => parse_limit(&v).map_err(|reason| invalid(ENV_LIMIT, &v, reason))?,
        };
        let log = match lookup(ENV_LOG) {
            None => Level::Warn,
            Some(v) => Level::parse(&v).ok_or_else(|| {
                invalid(
                    ENV_LOG,
                    &v,
                    "expected off, error, warn, info or debug".into(),
                )
            })?,
        };
        let real_libcuda = match lookup(ENV_REAL_LIBCUDA) {
            None => None,
            Some(v) if v.trim().is_empty() || v.contains('\0') => {
                return Err(invalid(
                    ENV_REAL_LIBCUDA,
                    &v,
                    "expected a library path".into(),
                ))
            }
            Some(v) => Some(v),
        };
        let context_estimate = match lookup(ENV_CONTEXT_BYTES) {
            None => DEFAULT_CONTEXT_ESTIMATE,
            Some(v) => match parse_size(&v) {
                Ok(Size::Bytes(b)) => b,
                Ok(Size::Percent(_)) => {
                    return Err(invalid(
                        ENV_CONTEXT_BYTES,
                        &v,
                        "expected a size in bytes".into(),
                    ))
                }
                Err(e) => return Err(invalid(ENV_CONTEXT_BYTES, &v, e.to_string())),
            },
        };
        let nvml = match lookup(ENV_NVML).as_deref().map(str::trim) {
            None | Some("on") | Some("1") => true,
            Some("off") | Some("0") => false,
            Some(v) => return Err(invalid(ENV_NVML, v, "expected on or off".into())),
        };
        let priority = match lookup(ENV_PRIORITY) {
            None => 0,
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| invalid(ENV_PRIORITY, &v, "expected an integer".into()))?,
        };
        Ok(Config {
            limit,
            real_libcuda,
            log,
            context_estimate,
            nvml,
            name: lookup(ENV_NAME).filter(|n| !n.is_empty()),
            priority,
        })
    }
}

/// Parses `VRAMCAP_LIMIT`: `10GiB`, `25%`, or `0=10GiB,1=20GiB`, `GPU-<uuid>=10GiB`.
pub fn parse_limit(text: &str) -> Result<Limit, String> {
    let size_err = |e: SizeError| e.to_string();
    if !text.contains('=') {
        return parse_size(text).map(Limit::All).map_err(size_err);
    }
    let mut entries: Vec<(DeviceKey, Size)> = Vec::new();
    for item in text.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err("empty entry in the per-device list".into());
        }
        let (key, size) = item
            .split_once('=')
            .ok_or_else(|| format!("entry '{item}' is not DEVICE=SIZE"))?;
        let key = parse_device_key(key.trim())?;
        let size = parse_size(size).map_err(|e| format!("device {}: {}", item_key(&key), e))?;
        if entries.iter().any(|(k, _)| *k == key) {
            return Err(format!("device {} is named twice", item_key(&key)));
        }
        entries.push((key, size));
    }
    Ok(Limit::PerDevice(entries))
}

fn item_key(key: &DeviceKey) -> String {
    match key {
        DeviceKey::Ordinal(o) => o.to_string(),
        DeviceKey::Uuid(u) => u.clone(),
    }
}

fn parse_device_key(key: &str) -> Result<DeviceKey, String> {
    if let Ok(ordinal) = key.parse::<u32>() {
        return Ok(DeviceKey::Ordinal(ordinal));
    }
    let lower = key.to_ascii_lowercase();
    let hex = lower.strip_prefix("gpu-").unwrap_or("");
    let groups: Vec<&str> = hex.split('-').collect();
    let shape_ok = groups.len() == 5
        && groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()));
    if shape_ok {
        Ok(DeviceKey::Uuid(lower))
    } else {
        Err(format!(
            "'{key}' is neither a CUDA ordinal nor a GPU UUID (GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"
        ))
    }
}

/// Formats a 16-byte CUDA UUID the way nvidia-smi does: `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
pub fn format_uuid(bytes: &[u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(40);
    out.push_str("GPU-");
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 15) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "GPU-0a1b2c3d-0000-1111-2222-333344445555";

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |var| {
            pairs
                .iter()
                .find(|(k, _)| *k == var)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn unset_counts_without_cap() {
        let c = Config::from_lookup(env(&[])).unwrap();
        assert_eq!(c.limit, Limit::Unset);
        assert_eq!(c.log, Level::Warn);
        assert_eq!(c.limit.for_device(0, UUID), None);
    }

    #[test]
    fn one_size_for_all() {
        let c = Config::from_lookup(env(&[(ENV_LIMIT, "2GiB")])).unwrap();
        assert_eq!(c.limit.for_device(3, UUID), Some(Size::Bytes(2 << 30)));
    }

    #[test]
    fn per_device_by_ordinal_and_uuid() {
        let spec = format!(
            "0=10GiB, {}=25%",
            UUID.to_ascii_uppercase().replace("GPU-", "gpu-")
        );
        let limit = parse_limit(&spec).unwrap();
        assert_eq!(limit.for_device(0, "GPU-x"), Some(Size::Bytes(10 << 30)));
        assert_eq!(limit.for_device(1, UUID), Some(Size::Percent(25.0)));
        assert_eq!(limit.for_device(2, "GPU-other"), None);
    }

    #[test]
    fn errors_name_variable_and_value() {
        let e = Config::from_lookup(env(&[(ENV_LIMIT, "12 parsecs")])).unwrap_err();
        assert_eq!(e.var, ENV_LIMIT);
        assert_eq!(e.value, "12 parsecs");
        let text = e.to_string();
        assert!(text.contains("VRAMCAP_LIMIT=\"12 parsecs\""), "{text}");
        assert!(text.contains("unknown unit"), "{text}");
        let e = Config::from_lookup(env(&[(ENV_LOG, "loud")])).unwrap_err();
        assert!(e.to_string().contains("VRAMCAP_LOG=\"loud\""));
        let e = Config::from_lookup(env(&[(ENV_PRIORITY, "high")])).unwrap_err();
        assert_eq!(e.var, ENV_PRIORITY);
    }

    #[test]
    fn bad_lists() {
        assert!(parse_limit("0=1G,0=2G")
            .unwrap_err()
            .contains("named twice"));
        assert!(parse_limit("0=1G,,1=2G")
            .unwrap_err()
            .contains("empty entry"));
        assert!(parse_limit("gpu0=1G").unwrap_err().contains("neither"));
        assert!(parse_limit("0=").is_err());
        assert!(parse_limit("GPU-1234=1G").is_err());
    }

    #[test]
    fn uuid_format() {
        let mut b = [0u8; 16];
        b[0] = 0x0a;
        b[15] = 0xff;
        assert_eq!(format_uuid(&b), "GPU-0a000000-0000-0000-0000-0000000000ff");
    }
}
