# Helpers the GPU scripts (gpu-e2e.sh, gpu-multi.sh) share: reading key=value output and comparing
# integers that may be missing (a missing figure compares false, so its row fails), and sizing a scenario
# from the card's memory.
# shellcheck shell=bash
val() { grep -m1 -o "$1=[^ ]*" "$2" | cut -d= -f2; }  # key file -> value
kv() { sed -n "s/^$1=\([^ ]*\).*/\1/p" "$2" | head -n 1; }  # key file -> value of a line starting key=
int() { [[ ${1:-} =~ ^-?[0-9]+$ ]]; }
le() { int "${1:-}" && int "${2:-}" && [ "$1" -le "$2" ]; }
lt() { int "${1:-}" && int "${2:-}" && [ "$1" -lt "$2" ]; }
ge() { int "${1:-}" && int "${2:-}" && [ "$1" -ge "$2" ]; }
gt() { int "${1:-}" && int "${2:-}" && [ "$1" -gt "$2" ]; }
mib() { if int "${1:-}"; then echo $(($1 >> 20)); else echo "?"; fi; }  # bytes -> MiB, for figures
# scaled VALUE TOTAL_MIB REF_MIB: VALUE, written for a card of REF_MIB MiB, scaled to one of TOTAL_MIB MiB
# (rounded to a whole number). Every scenario is sized from the card (nvidia-smi's memory.total).
scaled() { awk -v v="$1" -v t="$2" -v r="$3" 'BEGIN {printf "%d", v * t / r + 0.5}'; }
# check_sections SCRIPT ONLY: exits 2 where ONLY names a section that $SECTIONS lacks.
check_sections() {
  local s
  for s in $2; do
    case " $SECTIONS " in
      *" $s "*) ;;
      *) echo "$1: unknown section '$s' (sections: $SECTIONS)" >&2; exit 2 ;;
    esac
  done
}
# run_sections ONLY [TIMELOG]: runs sec_NAME for each of $SECTIONS that ONLY names (all where ONLY is
# empty), in order, adding "NAME Ns" to TIMES (and "section NAME took Ns" to stderr and TIMELOG, if given).
run_sections() {
  local s t0
  for s in $SECTIONS; do
    [ -z "$1" ] || [[ " $1 " == *" $s "* ]] || continue
    t0=$SECONDS
    echo "=== section $s" >&2
    "sec_$s"
    TIMES+=("$s $((SECONDS - t0))s")
    [ -z "${2:-}" ] || echo "section $s took $((SECONDS - t0))s" | tee -a "$2" >&2
  done
}
