#!/usr/bin/env bash
# scripts/install.sh PREFIX: builds vramcap (release) and installs it under PREFIX:
#   PREFIX/bin/vramcap, PREFIX/bin/vramcap-run
#   PREFIX/lib/libvramcap.so        (../lib from vramcap-run: where it looks, no VRAMCAP_LIB needed)
#   PREFIX/lib/vramcap/libvramcap_sim.so   (the simulated device of `vramcap demo`, a fake driver: in a
#                                   folder of its own, which ldconfig does not read, since its soname
#                                   is libcuda.so.1)
#   PREFIX/share/man/man1/vramcap*.1, and completions for bash, zsh and fish under PREFIX/share
# for example `sudo scripts/install.sh /usr/local` or `scripts/install.sh ~/.local`. Each file is written
# beside its place and renamed into it, so a capped process that has the old libvramcap.so mapped keeps
# running on it (overwriting a mapped library in place would crash it). Needs cargo and a C linker.
# Uninstall: rm PREFIX/bin/vramcap PREFIX/bin/vramcap-run PREFIX/lib/libvramcap.so
# PREFIX/lib/vramcap/libvramcap_sim.so and the files listed.
set -euo pipefail
if [ $# -ne 1 ] || [ -z "$1" ]; then
  echo "usage: scripts/install.sh PREFIX   (for example /usr/local or ~/.local)" >&2
  exit 2
fi
mkdir -p "$1"
prefix=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release --locked
staged=$(mktemp -d)
trap 'rm -rf "$staged"' EXIT
cargo run --release --locked -q -p vramcap-gen-docs -- "$staged/share" >/dev/null

# put MODE SOURCE DEST: write DEST.new, then rename it over DEST.
put() {
  mkdir -p "$(dirname "$3")"
  install -m "$1" "$2" "$3.new.$$"
  mv -f "$3.new.$$" "$3"
  echo "$3"
}
put 0755 "$target/release/vramcap" "$prefix/bin/vramcap"
put 0755 "$target/release/vramcap-run" "$prefix/bin/vramcap-run"
put 0644 "$target/release/libvramcap.so" "$prefix/lib/libvramcap.so"
put 0644 "$target/release/libvramcap_sim.so" "$prefix/lib/vramcap/libvramcap_sim.so"
(cd "$staged" && find share -type f | sort) | while read -r f; do
  put 0644 "$staged/$f" "$prefix/$f"
done
