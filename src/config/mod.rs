//! The environment contract: `VRAMCAP_LIMIT` (and HAMi's `CUDA_DEVICE_MEMORY_LIMIT[_<i>]`, its aliases),
//! `VRAMCAP_REAL_LIBCUDA`, `VRAMCAP_LOG` and the worker identity that `vramcap-run` sets. Parsed once, at
//! the first CUDA call, never inside `dlsym`; `vramcap-run` runs the same parser over the environment it
//! is about to exec with, so the two agree exactly.
//!
//! A malformed value is an error that names the variable and the value; the preload library turns it into a
//! refused `cuInit`, so a typo never leaves a program running uncapped.

pub mod size;

use crate::config::size::{parse_size, Size, SizeError};
use crate::log::Level;

pub const ENV_LIMIT: &str = "VRAMCAP_LIMIT";
pub const ENV_REAL_LIBCUDA: &str = "VRAMCAP_REAL_LIBCUDA";
pub const ENV_LOG: &str = "VRAMCAP_LOG";
pub const ENV_NAME: &str = "VRAMCAP_NAME";
pub const ENV_PRIORITY: &str = "VRAMCAP_PRIORITY";
pub const ENV_CONTEXT_BYTES: &str = "VRAMCAP_CONTEXT_BYTES";
pub const ENV_NVML: &str = "VRAMCAP_NVML";
pub const ENV_PROTECT: &str = "VRAMCAP_PROTECT";
pub const ENV_UNLOAD_URL: &str = "VRAMCAP_UNLOAD_URL";
pub const ENV_UNLOAD_SIGNAL: &str = "VRAMCAP_UNLOAD_SIGNAL";
pub const ENV_UNLOAD_CMD: &str = "VRAMCAP_UNLOAD_CMD";
pub const ENV_RELOAD_URL: &str = "VRAMCAP_RELOAD_URL";
pub const ENV_RELOAD_SIGNAL: &str = "VRAMCAP_RELOAD_SIGNAL";
pub const ENV_RELOAD_CMD: &str = "VRAMCAP_RELOAD_CMD";
pub const ENV_WAIT: &str = "VRAMCAP_WAIT";
pub const ENV_ON_PRESSURE: &str = "VRAMCAP_ON_PRESSURE";
pub const ENV_ALLOW_ABSENT_DEVICES: &str = "VRAMCAP_ALLOW_ABSENT_DEVICES";
/// HAMi's limit for every device (`4g`, `3000m`), an alias of `VRAMCAP_LIMIT` that yields to it.
pub const ENV_HAMI_LIMIT: &str = "CUDA_DEVICE_MEMORY_LIMIT";
/// HAMi's limit for CUDA device `<i>` (`CUDA_DEVICE_MEMORY_LIMIT_0=3000m`), over `CUDA_DEVICE_MEMORY_LIMIT`.
pub const ENV_HAMI_LIMIT_PREFIX: &str = "CUDA_DEVICE_MEMORY_LIMIT_";
/// The device indexes [`Config::from_lookup`] tries for `CUDA_DEVICE_MEMORY_LIMIT_<i>` (it cannot list
/// the environment; [`Config::from_env`] reads every name there is).
pub const HAMI_PROBED_DEVICES: u32 = 64;

/// Every `VRAMCAP_*` variable a vramcap component reads: the library's above, the segment's
/// (`VRAMCAP_SHM`, `VRAMCAP_SHM_MODE`) and `vramcap-run`'s own (`VRAMCAP_LIB`).
pub const KNOWN_VARS: &[&str] = &[
    ENV_LIMIT,
    ENV_REAL_LIBCUDA,
    ENV_LOG,
    ENV_NAME,
    ENV_PRIORITY,
    ENV_CONTEXT_BYTES,
    ENV_NVML,
    ENV_PROTECT,
    ENV_UNLOAD_URL,
    ENV_UNLOAD_SIGNAL,
    ENV_UNLOAD_CMD,
    ENV_RELOAD_URL,
    ENV_RELOAD_SIGNAL,
    ENV_RELOAD_CMD,
    ENV_WAIT,
    ENV_ON_PRESSURE,
    ENV_ALLOW_ABSENT_DEVICES,
    "VRAMCAP_SHM",
    "VRAMCAP_SHM_MODE",
    "VRAMCAP_LIB",
];

/// How the unloader may ask this worker to give its memory back.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum UnloadHook {
    #[default]
    None,
    /// HTTP POST to this `http://` URL.
    Url(String),
    /// This signal (its number), as given (`USR1`, `SIGTERM`, `10`).
    Signal(i32, String),
    /// This shell command, run with `VRAMCAP_PID` and `VRAMCAP_NAME` set.
    Cmd(String),
}

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
    /// HAMi's form (`CUDA_DEVICE_MEMORY_LIMIT`, `CUDA_DEVICE_MEMORY_LIMIT_<i>`): caps by CUDA ordinal, over
    /// a cap for every other device where one is given. As in HAMi, an ordinal the process does not see
    /// names nothing.
    Hami {
        every: Option<Size>,
        devices: Vec<(u32, Size)>,
    },
}

fn invalid(var: &'static str, value: &str, reason: String) -> ConfigError {
    ConfigError {
        var: var.to_string(),
        value: value.to_string(),
        reason,
    }
}

/// The hook that one of `[url, signal, cmd]` declares (at most one of them may be set).
fn hook_of(
    lookup: &impl Fn(&str) -> Option<String>,
    vars: [&'static str; 3],
    what: &str,
) -> Result<UnloadHook, ConfigError> {
    let [url, signal, _] = vars;
    let mut given = vars.iter().filter_map(|&var| {
        lookup(var)
            .filter(|v| !v.trim().is_empty())
            .map(|v| (var, v))
    });
    Ok(match (given.next(), given.next()) {
        (None, _) => UnloadHook::None,
        (Some((var, v)), Some((other, _))) => {
            return Err(invalid(
                var,
                &v,
                format!("{other} is set too; give one way to {what}"),
            ))
        }
        (Some((var, v)), None) if var == url => {
            parse_http_url(&v).map_err(|reason| invalid(var, &v, reason))?;
            UnloadHook::Url(v.trim().to_string())
        }
        (Some((var, v)), None) if var == signal => {
            let n = parse_signal(&v).map_err(|reason| invalid(var, &v, reason))?;
            UnloadHook::Signal(n, v.trim().to_string())
        }
        (Some((_, v)), None) => UnloadHook::Cmd(v),
    })
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
            Limit::Hami { every, devices } => devices
                .iter()
                .find(|(o, _)| *o == ordinal)
                .map(|(_, size)| *size)
                .or(*every),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?} is invalid: {reason}")]
pub struct ConfigError {
    pub var: String,
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
    /// Never asked to unload.
    pub protect: bool,
    pub unload: UnloadHook,
    /// How the unloader tells this worker, after an unload, that its memory fits again.
    pub reload: UnloadHook,
    /// The unloader may suspend this worker (`VRAMCAP_ON_PRESSURE=suspend`).
    pub suspendable: bool,
    /// How long an allocation refused by a full device waits for the unloader (`None`: fail at once).
    pub wait: Option<std::time::Duration>,
    /// A per-device limit may name a device this process does not see (`VRAMCAP_ALLOW_ABSENT_DEVICES=1`,
    /// for launchers that give one limit to several jobs); otherwise that is a configuration error.
    pub allow_absent_devices: bool,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup_names(env_lookup, &hami_names_in_env())
    }

    /// Reads the variables through `lookup`, so tests need not touch the process environment. It cannot
    /// list names, so `CUDA_DEVICE_MEMORY_LIMIT_<i>` is tried for the first [`HAMI_PROBED_DEVICES`].
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let names: Vec<String> = (0..HAMI_PROBED_DEVICES)
            .map(|i| format!("{ENV_HAMI_LIMIT_PREFIX}{i}"))
            .collect();
        Config::from_lookup_names(lookup, &names)
    }

    /// Reads the variables through `lookup`; `hami_names` are the `CUDA_DEVICE_MEMORY_LIMIT_*` names to
    /// look at (those set, for an environment that can be listed).
    pub fn from_lookup_names(
        lookup: impl Fn(&str) -> Option<String>,
        hami_names: &[String],
    ) -> Result<Config, ConfigError> {
        let invalid = |var: &str, value: &str, reason: String| ConfigError {
            var: var.to_string(),
            value: value.to_string(),
            reason,
        };
        let limit = limit_from(&lookup, hami_names)?.0;
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
        let context_estimate = context_bytes(lookup(ENV_CONTEXT_BYTES).as_deref())?;
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
        let protect = match lookup(ENV_PROTECT).as_deref().map(str::trim) {
            None | Some("") | Some("0") | Some("off") => false,
            Some("1") | Some("on") => true,
            Some(v) => return Err(invalid(ENV_PROTECT, v, "expected 1 or 0".into())),
        };
        let unload = hook_of(
            &lookup,
            [ENV_UNLOAD_URL, ENV_UNLOAD_SIGNAL, ENV_UNLOAD_CMD],
            "unload",
        )?;
        let reload = hook_of(
            &lookup,
            [ENV_RELOAD_URL, ENV_RELOAD_SIGNAL, ENV_RELOAD_CMD],
            "reload",
        )?;
        let suspendable = match lookup(ENV_ON_PRESSURE).as_deref().map(str::trim) {
            None | Some("") | Some("fail") => false,
            Some("suspend") => true,
            Some(v) => {
                return Err(invalid(
                    ENV_ON_PRESSURE,
                    v,
                    "expected suspend (or fail, the default)".into(),
                ))
            }
        };
        let allow_absent_devices = match lookup(ENV_ALLOW_ABSENT_DEVICES).as_deref().map(str::trim)
        {
            None | Some("") | Some("0") | Some("off") => false,
            Some("1") | Some("on") => true,
            Some(v) => {
                return Err(invalid(
                    ENV_ALLOW_ABSENT_DEVICES,
                    v,
                    "expected 1 or 0".into(),
                ))
            }
        };
        let wait = match lookup(ENV_WAIT) {
            None => None,
            Some(v) => Some(parse_duration(&v).map_err(|reason| invalid(ENV_WAIT, &v, reason))?),
        };
        Ok(Config {
            limit,
            real_libcuda,
            log,
            context_estimate,
            nvml,
            name: lookup(ENV_NAME).filter(|n| !n.is_empty()),
            priority,
            protect,
            unload,
            reload,
            suspendable,
            wait,
            allow_absent_devices,
        })
    }
}

/// The process environment as [`Config::from_lookup`] wants it.
fn env_lookup(var: &str) -> Option<String> {
    std::env::var_os(var).map(|v| v.to_string_lossy().into_owned())
}

/// The `CUDA_DEVICE_MEMORY_LIMIT_*` names set in the process environment.
pub fn hami_names_in_env() -> Vec<String> {
    std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with(ENV_HAMI_LIMIT_PREFIX))
        .collect()
}

/// Where a limit came from: the variable, and its value as given (several for HAMi's form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSource(pub Vec<(String, String)>);

impl std::fmt::Display for LimitSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (var, value)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{var}={value:?}")?;
        }
        Ok(())
    }
}

/// The limit a process gets, and where it came from (`None`: unset). `VRAMCAP_LIMIT` wins: while it is
/// set, HAMi's `CUDA_DEVICE_MEMORY_LIMIT` and `CUDA_DEVICE_MEMORY_LIMIT_<i>` are not read at all.
/// Otherwise those give a cap for every device and, per CUDA ordinal `<i>`, one that replaces it for
/// that device (HAMi's own precedence). `hami_names` are the `CUDA_DEVICE_MEMORY_LIMIT_*` names to read.
pub fn limit_from(
    lookup: &impl Fn(&str) -> Option<String>,
    hami_names: &[String],
) -> Result<(Limit, Option<LimitSource>), ConfigError> {
    let invalid = |var: &str, value: &str, reason: String| ConfigError {
        var: var.to_string(),
        value: value.to_string(),
        reason,
    };
    if let Some(v) = lookup(ENV_LIMIT) {
        let limit = parse_limit(&v).map_err(|reason| invalid(ENV_LIMIT, &v, reason))?;
        return Ok((limit, Some(LimitSource(vec![(ENV_LIMIT.to_string(), v)]))));
    }
    let mut source = Vec::new();
    let every = match lookup(ENV_HAMI_LIMIT) {
        None => None,
        Some(v) => {
            let size = parse_size(&v).map_err(|e| invalid(ENV_HAMI_LIMIT, &v, e.to_string()))?;
            source.push((ENV_HAMI_LIMIT.to_string(), v));
            Some(size)
        }
    };
    let mut devices: Vec<(u32, Size)> = Vec::new();
    let mut names: Vec<&String> = hami_names.iter().collect();
    names.sort_by_key(|n| (n.len(), n.as_str()));
    names.dedup();
    for name in names {
        let Some(v) = lookup(name) else { continue };
        let index = name
            .strip_prefix(ENV_HAMI_LIMIT_PREFIX)
            .filter(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|i| i.parse::<u32>().ok())
            .ok_or_else(|| {
                invalid(
                    name,
                    &v,
                    format!("{ENV_HAMI_LIMIT_PREFIX}<i> takes a CUDA device index for <i>"),
                )
            })?;
        let size = parse_size(&v).map_err(|e| invalid(name, &v, e.to_string()))?;
        devices.push((index, size));
        source.push((name.clone(), v));
    }
    if every.is_none() && devices.is_empty() {
        return Ok((Limit::Unset, None));
    }
    devices.sort_by_key(|(i, _)| *i);
    Ok((Limit::Hami { every, devices }, Some(LimitSource(source))))
}

/// `VRAMCAP_CONTEXT_BYTES` (default 512 MiB): what a context is assumed to cost until it is measured.
pub fn context_bytes(value: Option<&str>) -> Result<u64, ConfigError> {
    let invalid = |reason: String| ConfigError {
        var: ENV_CONTEXT_BYTES.to_string(),
        value: value.unwrap_or_default().to_string(),
        reason,
    };
    match value {
        None => Ok(DEFAULT_CONTEXT_ESTIMATE),
        Some(v) => match parse_size(v) {
            Ok(Size::Bytes(b)) => Ok(b),
            Ok(Size::Percent(_)) => Err(invalid("expected a size in bytes".into())),
            Err(e) => Err(invalid(e.to_string())),
        },
    }
}

/// The `VRAMCAP_*` name `name` was probably meant to be, if it is no variable of ours but one or two
/// letters away from one (`VRAMCAP_LIMT`): a typo there would leave a job uncapped.
pub fn misspelt_var(name: &str) -> Option<&'static str> {
    if !name.starts_with("VRAMCAP_") || KNOWN_VARS.contains(&name) {
        return None;
    }
    KNOWN_VARS
        .iter()
        .copied()
        .filter(|known| edit_distance(name, known) <= 2)
        .min_by_key(|known| edit_distance(name, known))
}

/// Levenshtein distance, for [`misspelt_var`].
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

impl Limit {
    /// Each cap as a line, for people: `every device: 10.00 GiB (10737418240 bytes)`.
    pub fn describe(&self) -> Vec<(String, Size)> {
        match self {
            Limit::Unset => Vec::new(),
            Limit::All(size) => vec![("every device".into(), *size)],
            Limit::PerDevice(entries) => entries
                .iter()
                .map(|(key, size)| (format!("device {key}"), *size))
                .collect(),
            Limit::Hami { every, devices } => devices
                .iter()
                .map(|(i, size)| (format!("device {i}"), *size))
                .chain(every.map(|size| {
                    let who = if devices.is_empty() {
                        "every device"
                    } else {
                        "every other device"
                    };
                    (who.to_string(), size)
                }))
                .collect(),
        }
    }
}

impl Limit {
    /// The per-device keys that name none of the devices a process sees (`uuids`, by ordinal), as text.
    pub fn absent_keys(&self, uuids: &[String]) -> Vec<String> {
        let Limit::PerDevice(entries) = self else {
            return Vec::new();
        };
        entries
            .iter()
            .filter(|(key, _)| match key {
                DeviceKey::Ordinal(o) => *o as usize >= uuids.len(),
                DeviceKey::Uuid(u) => !uuids.iter().any(|seen| seen.eq_ignore_ascii_case(u)),
            })
            .map(|(key, _)| key.to_string())
            .collect()
    }
}

impl std::fmt::Display for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceKey::Ordinal(o) => write!(f, "{o}"),
            DeviceKey::Uuid(u) => write!(f, "{u}"),
        }
    }
}

/// For a launcher (`vramcap-run`): the per-device keys of `limit` that surely name no device the command
/// will see, given `CUDA_VISIBLE_DEVICES` (`visible`) and, where NVML answered, the machine's GPU UUIDs.
/// Where it cannot be told (no NVML, entries it cannot match), a key is not listed: the library checks
/// again against the driver.
pub fn surely_absent_keys(
    limit: &Limit,
    visible: Option<&str>,
    machine: Option<&[String]>,
) -> Vec<String> {
    let Limit::PerDevice(entries) = limit else {
        return Vec::new();
    };
    // The devices the command will see: a count, and their UUIDs where they can be told.
    let (count, uuids): (Option<usize>, Option<Vec<String>>) = match (visible, machine) {
        (None, Some(all)) => (Some(all.len()), Some(all.to_vec())),
        (None, None) => (None, None),
        (Some(v), machine) => {
            let mut count = 0;
            let mut uuids = Some(Vec::new());
            for entry in v.split(',').map(str::trim) {
                if entry.is_empty() {
                    break;
                }
                let matched = if entry.len() > 4 && entry[..4].eq_ignore_ascii_case("gpu-") {
                    match machine {
                        Some(all) => {
                            let m: Vec<&String> = all
                                .iter()
                                .filter(|u| {
                                    u.to_ascii_lowercase()
                                        .starts_with(&entry.to_ascii_lowercase())
                                })
                                .collect();
                            if m.len() != 1 {
                                break;
                            }
                            if let Some(list) = uuids.as_mut() {
                                list.push(m[0].clone());
                            }
                            true
                        }
                        None => {
                            uuids = None;
                            true
                        }
                    }
                } else if let Ok(i) = entry.parse::<usize>() {
                    // CUDA's order need not be NVML's: the count holds, the UUIDs cannot be told.
                    uuids = None;
                    machine.is_none_or(|all| i < all.len())
                } else {
                    false
                };
                if !matched {
                    break;
                }
                count += 1;
            }
            (Some(count), uuids)
        }
    };
    entries
        .iter()
        .filter(|(key, _)| match key {
            DeviceKey::Ordinal(o) => count.is_some_and(|n| *o as usize >= n),
            DeviceKey::Uuid(u) => uuids
                .as_ref()
                .is_some_and(|list| !list.iter().any(|seen| seen.eq_ignore_ascii_case(u))),
        })
        .map(|(key, _)| key.to_string())
        .collect()
}

/// Says which devices a per-device limit names that the process does not see, as one line naming the
/// variable and its value.
pub fn absent_devices_error(var: &str, value: &str, absent: &[String], uuids: &[String]) -> String {
    let seen = if uuids.is_empty() {
        "none".to_string()
    } else {
        uuids
            .iter()
            .enumerate()
            .map(|(i, u)| format!("{i} = {u}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "{var}={value:?} names device {}, which this process does not see (it sees {seen}); set \
         {ENV_ALLOW_ABSENT_DEVICES}=1 to allow limits for absent devices",
        absent.join(", ")
    )
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

/// Parses a duration: `30s`, `500ms`, `2m`, `1.5s`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("'{t}' is not a duration (like 30s, 500ms, 2m)"))?;
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        u => return Err(format!("unknown unit '{u}' (use ms, s, m or h)")),
    };
    let secs = n * scale;
    if !secs.is_finite() || secs > 86_400.0 * 365.0 {
        return Err(format!("'{t}' is too long"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// Parses a signal: `USR1`, `SIGUSR1`, `sigterm` or a number.
pub fn parse_signal(text: &str) -> Result<i32, String> {
    let t = text.trim();
    if let Ok(n) = t.parse::<i32>() {
        return if (1..=64).contains(&n) {
            Ok(n)
        } else {
            Err(format!("signal number {n} is out of range (1-64)"))
        };
    }
    let upper = t.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let n = match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "CONT" => libc::SIGCONT,
        "WINCH" => libc::SIGWINCH,
        _ => {
            return Err(format!(
                "'{t}' is not a signal name (USR1, USR2, HUP, TERM, …)"
            ))
        }
    };
    Ok(n)
}

/// Splits an `http://host:port/path` URL into (host, port, path). Only plain HTTP: unload endpoints are
/// local services.
pub fn parse_http_url(text: &str) -> Result<(String, u16, String), String> {
    // One exact grammar, `http://host[:port][/path]`: the URL is written into an HTTP request line, so a
    // control character or a space could write the request itself (headers, a body, a second request).
    if let Some(bad) = text.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "{text:?} contains {bad:?}: no spaces or control characters in a URL"
        ));
    }
    let t = text;
    let rest = t
        .strip_prefix("http://")
        .ok_or_else(|| format!("{t:?} is not an http:// URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{t:?} has an unclosed [IPv6] host"))?;
        if after.is_empty() || after.starts_with(':') {
            (h, after.strip_prefix(':'))
        } else {
            return Err(format!("{t:?} has text after its [IPv6] host"));
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{t:?} names no host"));
    }
    let host_ok = host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '%'));
    if !host_ok {
        return Err(format!(
            "{t:?}: the host may hold letters, digits, '.', '-' (and ':' in [IPv6])"
        ));
    }
    let port = match port {
        None => 80,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            p.parse().map_err(|_| format!("{t:?} has a bad port"))?
        }
        Some(_) => return Err(format!("{t:?} has a bad port")),
    };
    if !path.is_ascii() {
        return Err(format!(
            "{t:?}: the path must be ASCII (percent-encode the rest)"
        ));
    }
    Ok((host.to_string(), port, path.to_string()))
}

/// A GPU UUID as text, spelled as [`format_uuid`] spells it (NVML prints `GPU-` and hex in either case).
pub fn canonical_uuid(text: &str) -> String {
    text.to_ascii_lowercase().replace("gpu-", "GPU-")
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
    fn worker_declarations() {
        let c = Config::from_lookup(env(&[
            (ENV_PROTECT, "1"),
            (ENV_UNLOAD_URL, "http://127.0.0.1:8001/memory/unload"),
            (ENV_WAIT, "1.5s"),
        ]))
        .unwrap();
        assert!(c.protect);
        assert_eq!(
            c.unload,
            UnloadHook::Url("http://127.0.0.1:8001/memory/unload".into())
        );
        assert_eq!(c.wait, Some(std::time::Duration::from_millis(1500)));
        let c = Config::from_lookup(env(&[(ENV_UNLOAD_SIGNAL, "sigusr1")])).unwrap();
        assert_eq!(
            c.unload,
            UnloadHook::Signal(libc::SIGUSR1, "sigusr1".into())
        );
        for (var, value, says) in [
            (ENV_UNLOAD_SIGNAL, "USR9", "not a signal"),
            (ENV_UNLOAD_URL, "https://x/unload", "not an http"),
            (ENV_WAIT, "soon", "not a duration"),
            (ENV_WAIT, "3 fortnights", "unknown unit"),
            (ENV_PROTECT, "yes please", "expected 1 or 0"),
        ] {
            let e = Config::from_lookup(env(&[(var, value)])).unwrap_err();
            assert_eq!((e.var.as_str(), e.value.as_str()), (var, value));
            assert!(e.to_string().contains(says), "{e}");
        }
        let e = Config::from_lookup(env(&[(ENV_UNLOAD_URL, "http://h/"), (ENV_UNLOAD_CMD, "x")]))
            .unwrap_err();
        assert!(e.to_string().contains("give one way"), "{e}");
        assert_eq!(
            parse_http_url("http://[::1]:9/u").unwrap(),
            ("::1".into(), 9, "/u".into())
        );
        assert_eq!(parse_duration("250ms").unwrap().as_millis(), 250);
    }

    #[test]
    fn keys_for_devices_not_seen() {
        let limit = parse_limit("0=1G,3=2G,GPU-aaaa0000-0000-0000-0000-000000000001=1G").unwrap();
        let uuids = vec!["GPU-aaaa0000-0000-0000-0000-000000000001".to_string()];
        assert_eq!(limit.absent_keys(&uuids), vec!["3".to_string()]);
        let two = vec![
            "GPU-aaaa0000-0000-0000-0000-000000000001".to_string(),
            "GPU-bbbb0000-0000-0000-0000-000000000002".to_string(),
        ];
        // What a launcher can tell: from NVML alone, from CUDA_VISIBLE_DEVICES, or nothing.
        assert_eq!(
            surely_absent_keys(&limit, None, Some(&two)),
            vec!["3".to_string()]
        );
        assert_eq!(surely_absent_keys(&limit, None, None), Vec::<String>::new());
        assert_eq!(
            surely_absent_keys(&limit, Some("1"), None),
            vec!["3".to_string()],
            "one visible device: ordinal 3 is absent; its UUID cannot be told without NVML"
        );
        assert_eq!(
            surely_absent_keys(&limit, Some("GPU-bbbb"), Some(&two)),
            vec![
                "3".to_string(),
                "gpu-aaaa0000-0000-0000-0000-000000000001".to_string()
            ]
        );
        assert_eq!(
            surely_absent_keys(&limit, Some("0,9,1"), Some(&two)).len(),
            1,
            "an invalid entry ends the list, as in the driver"
        );
        assert!(surely_absent_keys(&parse_limit("5G").unwrap(), Some(""), None).is_empty());
        let line = absent_devices_error(ENV_LIMIT, "3=2G", &["3".into()], &uuids);
        assert!(line.starts_with("VRAMCAP_LIMIT=\"3=2G\" names device 3, which this process does not see (it sees 0 = GPU-aaaa"), "{line}");
    }

    #[test]
    fn urls_cannot_write_the_request() {
        for bad in [
            "http://127.0.0.1:8001/unload\r\nX-Injected: 1",
            "http://127.0.0.1:8001/unload HTTP/1.1\r\n\r\nGET /admin",
            "http://127.0.0.1:8001/a\nb",
            "http://127.0.0.1:8001/a\tb",
            "http://user@127.0.0.1/x",
            "http://127.0.0.1:80x/x",
            "http://[::1]x/y",
            "http://127.0.0.1/\u{e9}",
            " http://127.0.0.1/x",
        ] {
            let e = parse_http_url(bad).unwrap_err();
            assert!(
                !e.contains('\r') && !e.contains('\n'),
                "the error shows no raw line break: {e}"
            );
        }
        assert_eq!(
            parse_http_url("http://localhost:9/memory/unload?now=1").unwrap(),
            ("localhost".into(), 9, "/memory/unload?now=1".into())
        );
    }

    #[test]
    fn hami_limits_are_aliases_that_vramcap_limit_overrides() {
        // CUDA_DEVICE_MEMORY_LIMIT for every device, CUDA_DEVICE_MEMORY_LIMIT_<i> over it for device i.
        let c = Config::from_lookup(env(&[
            (ENV_HAMI_LIMIT, "4g"),
            ("CUDA_DEVICE_MEMORY_LIMIT_1", "3000m"),
        ]))
        .unwrap();
        assert_eq!(c.limit.for_device(0, UUID), Some(Size::Bytes(4 << 30)));
        assert_eq!(c.limit.for_device(1, UUID), Some(Size::Bytes(3000 << 20)));
        assert_eq!(c.limit.for_device(7, UUID), Some(Size::Bytes(4 << 30)));
        // Per-device alone: the other devices are counted, not capped; an ordinal not seen is HAMi's
        // "no such device", not an error.
        let c = Config::from_lookup(env(&[("CUDA_DEVICE_MEMORY_LIMIT_0", "1024m")])).unwrap();
        assert_eq!(c.limit.for_device(0, UUID), Some(Size::Bytes(1 << 30)));
        assert_eq!(c.limit.for_device(1, UUID), None);
        assert!(c.limit.absent_keys(&[]).is_empty());
        // VRAMCAP_LIMIT wins, and the aliases are not even read.
        let both = [
            (ENV_LIMIT, "2GiB"),
            (ENV_HAMI_LIMIT, "not a size"),
            ("CUDA_DEVICE_MEMORY_LIMIT_0", "1g"),
        ];
        let c = Config::from_lookup(env(&both)).unwrap();
        assert_eq!(c.limit, Limit::All(Size::Bytes(2 << 30)));
        // A bad alias names itself.
        let e = Config::from_lookup(env(&[("CUDA_DEVICE_MEMORY_LIMIT_2", "lots")])).unwrap_err();
        assert_eq!(
            (e.var.as_str(), e.value.as_str()),
            ("CUDA_DEVICE_MEMORY_LIMIT_2", "lots")
        );
        let names = vec!["CUDA_DEVICE_MEMORY_LIMIT_O".to_string()];
        let e = Config::from_lookup_names(env(&[("CUDA_DEVICE_MEMORY_LIMIT_O", "1g")]), &names)
            .unwrap_err();
        assert!(e.to_string().contains("takes a CUDA device index"), "{e}");
        let (_, source) = limit_from(&env(&[(ENV_HAMI_LIMIT, "4g")]), &[]).unwrap();
        assert_eq!(
            source.unwrap().to_string(),
            "CUDA_DEVICE_MEMORY_LIMIT=\"4g\""
        );
    }

    #[test]
    fn typos_of_our_variables_are_told_apart_from_other_names() {
        assert_eq!(misspelt_var("VRAMCAP_LIMT"), Some(ENV_LIMIT));
        assert_eq!(misspelt_var("VRAMCAP_PRIORTY"), Some(ENV_PRIORITY));
        assert_eq!(misspelt_var("VRAMCAP_LIMIT"), None);
        assert_eq!(
            misspelt_var("VRAMCAP_E2E_HOLD"),
            None,
            "far from every name"
        );
        assert_eq!(misspelt_var("CUDA_VISIBLE_DEVICES"), None);
    }

    #[test]
    fn context_bytes_default_and_errors() {
        assert_eq!(context_bytes(None), Ok(DEFAULT_CONTEXT_ESTIMATE));
        assert_eq!(context_bytes(Some("300MiB")), Ok(300 << 20));
        let e = context_bytes(Some("5%")).unwrap_err();
        assert_eq!(e.var, ENV_CONTEXT_BYTES);
    }

    #[test]
    fn uuid_format() {
        let mut b = [0u8; 16];
        b[0] = 0x0a;
        b[15] = 0xff;
        assert_eq!(format_uuid(&b), "GPU-0a000000-0000-0000-0000-0000000000ff");
    }
}
