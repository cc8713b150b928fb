//! `include/vramcap.h` is what cbindgen generates from the shared-memory layout (src/shm/layout.rs).
use std::path::Path;

fn generate() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src/shm/layout.rs"))
        .generate()
        .expect("cbindgen")
        .write(&mut out);
    String::from_utf8(out).expect("utf-8")
}

#[test]
fn c_header_matches_the_rust_layout() {
    let header = generate();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("include/vramcap.h");
    if std::env::var_os("VRAMCAP_WRITE_HEADER").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &header).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        committed, header,
        "include/vramcap.h is stale: VRAMCAP_WRITE_HEADER=1 cargo test --test gen_header"
    );
}
