//! Where libvramcap.so is: one rule for `vramcap-run` and `vramcap demo` (this file is in both binaries).

use std::path::PathBuf;

/// libvramcap.so: `VRAMCAP_LIB`, else beside this executable (`target/release/`), else in `../lib/`
/// from it (`PREFIX/bin/vramcap-run` or `PREFIX/bin/vramcap`, and `PREFIX/lib/libvramcap.so`:
/// `scripts/install.sh`, the wheel).
/// The executable's path is the kernel's (`/proc/self/exe`), links resolved, so a link to it on `PATH`
/// finds the library of the real install.
pub fn find() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("VRAMCAP_LIB") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("VRAMCAP_LIB={:?} is not a file", path))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate this executable: {e}"))?;
    let dir = exe.parent().unwrap_or(std::path::Path::new("/"));
    let places = [dir.to_path_buf(), dir.parent().unwrap_or(dir).join("lib")];
    places
        .iter()
        .map(|place| place.join("libvramcap.so"))
        .find(|path| path.is_file())
        .ok_or_else(|| {
            format!(
                "libvramcap.so is neither beside {} nor in {} (set VRAMCAP_LIB to its path)",
                exe.display(),
                places[1].display()
            )
        })
}
