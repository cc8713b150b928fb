fn main() {
    // Loaded as libcuda.so.1 and libnvidia-ml.so.1 through symlinks; the soname makes -lcuda links record
    // libcuda.so.1 as the real driver's would.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcuda.so.1");
}
