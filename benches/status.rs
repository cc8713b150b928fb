//! `vramcap status` over a full segment: 1024 live slots (all held by this process, so every owner is
//! alive), each found by its record lock, read with `pread` and checked, its PID checked in `/proc`, and
//! rendered as the table, without NVML. A host has a few workers, not 1024: this is the worst case.

use criterion::{criterion_group, criterion_main, Criterion};
use vramcap_core::shm::{Identity, Segment, VramcapDevice, VRAMCAP_SLOTS};
use vramcap_core::status;

fn full_segment(c: &mut Criterion) {
    let path = std::path::PathBuf::from(format!("/dev/shm/vramcap-bench-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let seg = Segment::open_or_create(&path, 0o600).expect("segment");
    let me = Identity::of_this_process(Some("bench"), 0);
    let device = VramcapDevice {
        uuid: [7; 16],
        charged: 1 << 30,
        cap: 2 << 30,
        ..Default::default()
    };
    for _ in 0..VRAMCAP_SLOTS {
        let slot = seg.claim(&me).expect("a free slot");
        seg.write_devices(slot, &[device]);
    }
    let shown = status::collect(&seg, "bench", false);
    assert_eq!(shown.processes.len(), VRAMCAP_SLOTS as usize);
    c.bench_function("status_1024_full_slots", |b| {
        b.iter(|| status::render(&status::collect(&seg, "bench", false)).len())
    });
    drop(seg);
    let _ = std::fs::remove_file(&path);
}

criterion_group!(benches, full_segment);
criterion_main!(benches);
