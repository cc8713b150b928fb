//! The real driver's answers to `cuGetProcAddress_v2`, read from the measured table.

use std::collections::HashMap;
use std::sync::OnceLock;

/// (version, flags) -> exported symbol, or None where the driver answered VERSION_NOT_SUFFICIENT.
type Answers = Vec<(i32, u64, Option<String>)>;

fn table() -> &'static HashMap<String, Answers> {
    static TABLE: OnceLock<HashMap<String, Answers>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut map: HashMap<String, Answers> = HashMap::new();
        for line in include_str!("../proc-address-table.txt").lines() {
            if line.starts_with('#') {
                continue;
            }
            let Some((request, answer)) = line.split_once(" -> ") else {
                continue;
            };
            let mut parts = request.split_whitespace();
            let (Some(name), Some(ver), Some(flags)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let (Ok(ver), Ok(flags)) = (ver.parse(), flags.parse()) else {
                continue;
            };
            let symbol = (!answer.starts_with("none")).then(|| answer.trim().to_string());
            map.entry(name.to_string())
                .or_default()
                .push((ver, flags, symbol));
        }
        map
    })
}

pub enum Answer {
    Symbol(String),
    VersionNotSufficient,
    NotInTable,
}

/// What the real driver hands out for (name, version, flags): the answer at the highest listed version not
/// above the request, with the same per-thread-stream flag, else with flags 0.
pub fn lookup(name: &str, version: i32, flags: u64) -> Answer {
    let Some(answers) = table().get(name) else {
        return Answer::NotInTable;
    };
    let ptds = flags & 2;
    let best = |want: u64| {
        answers
            .iter()
            .filter(|(v, f, _)| *f == want && *v <= version)
            .max_by_key(|(v, _, _)| *v)
    };
    match best(ptds).or_else(|| best(0)) {
        Some((_, _, Some(sym))) => Answer::Symbol(sym.clone()),
        _ => Answer::VersionNotSufficient,
    }
}
