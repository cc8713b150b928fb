//! Several devices (the fake with `FAKECUDA_DEVICES=2`): memory is charged to the device it lives on,
//! caps follow the process's view of `CUDA_VISIBLE_DEVICES` (ordinals) and the physical GPU (UUIDs), and
//! the shared segment keys every figure by UUID.

mod common;
use common::*;

const DEV0: &str = "GPU-fa4e0000-0000-0000-0000-000000000000";
const DEV1: &str = "GPU-fa4e0000-0000-0000-0000-000000000001";

#[test]
fn memory_is_charged_to_the_device_it_lives_on() {
    // Device 1 capped at 1 GiB (300 MiB of it its context: room for 11 x 64 MiB), device 0 not; device 0
    // is current throughout, except in the thread that makes device 1 current.
    let vars = [("FAKECUDA_DEVICES", "2"), ("VRAMCAP_LIMIT", "1=1GiB")];
    for path in PATHS {
        let r = client(path, &["cross"], &vars);
        for what in ["create", "thread", "managed", "pool", "default_pool"] {
            assert_eq!(
                r.get(&format!("{what}_count")),
                11,
                "{path}: {what}: refused at device 1's cap\n{}{}",
                r.stdout,
                r.stderr
            );
            assert!(
                r.get(&format!("{what}_used1")) <= GIB,
                "{path}: {what}: {}",
                r.stdout
            );
        }
        for what in ["create", "pool", "default_pool"] {
            assert_eq!(
                r.get(&format!("{what}_used0")),
                CONTEXT,
                "{path}: {what}: device 0 untouched"
            );
        }
        assert_eq!(
            r.int("dev0_alloc"),
            0,
            "{path}: device 0 keeps its own room"
        );
    }
}

#[test]
fn caps_follow_visible_devices_by_ordinal_and_by_uuid() {
    // CUDA_VISIBLE_DEVICES=1,0: ordinal 0 is the second physical GPU.
    for (limit, capped) in [
        (format!("{DEV1}=1GiB"), true),
        ("0=1GiB".to_string(), true),
        (format!("{DEV0}=1GiB"), false),
        ("1=1GiB".to_string(), false),
    ] {
        let vars = [
            ("FAKECUDA_DEVICES", "2"),
            ("CUDA_VISIBLE_DEVICES", "1,0"),
            ("VRAMCAP_LIMIT", limit.as_str()),
        ];
        let r = client("dlsym", &["cap"], &vars);
        if capped {
            assert_eq!(r.get("allocated"), 11, "{limit}: {}{}", r.stdout, r.stderr);
            assert!(r.get("device_used_at_cap") <= GIB, "{limit}: {}", r.stdout);
        } else {
            assert!(
                r.get("allocated") > 11,
                "{limit}: ordinal 0 is not capped: {}",
                r.stdout
            );
        }
    }
}

#[test]
fn the_segment_keys_devices_by_uuid_whatever_the_ordinals() {
    let shm = shm_path("uuid-keys");
    let shm_s = shm.display().to_string();
    let common = [
        ("FAKECUDA_DEVICES", "2"),
        ("VRAMCAP_LIMIT", "1GiB"),
        ("VRAMCAP_SHM", shm_s.as_str()),
    ];
    // The same physical GPU seen as ordinal 0 by index, by UUID, and (third) another GPU.
    let views = [("by-index", "1"), ("by-uuid", DEV1), ("other", "0")];
    let holders: Vec<_> = views
        .iter()
        .map(|(name, visible)| {
            let mut vars = common.to_vec();
            vars.push(("CUDA_VISIBLE_DEVICES", visible));
            vars.push(("VRAMCAP_NAME", name));
            hold("dlsym", &vars)
        })
        .collect();
    let out = vramcap(&shm, &["status", "--json", "--no-nvml"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    let uuid_of = |name: &str| {
        status["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["devices"][0]["uuid"].as_str().unwrap().to_string())
            .unwrap_or_default()
    };
    assert_eq!(
        uuid_of("by-index").to_ascii_lowercase(),
        DEV1.to_ascii_lowercase()
    );
    assert_eq!(
        uuid_of("by-uuid").to_ascii_lowercase(),
        DEV1.to_ascii_lowercase()
    );
    assert_eq!(
        uuid_of("other").to_ascii_lowercase(),
        DEV0.to_ascii_lowercase()
    );
    let totals = status["totals"].as_array().unwrap();
    let on_dev1 = totals
        .iter()
        .find(|t| t["uuid"].as_str().unwrap().eq_ignore_ascii_case(DEV1))
        .expect("totals for the shared GPU");
    assert_eq!(on_dev1["processes"], 2, "{status}");
    for h in holders {
        h.release();
    }
    let _ = std::fs::remove_file(&shm);
}
