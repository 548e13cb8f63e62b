# Sourced by the bench scripts that publish into RELIABILITY.md: each owns one section,
# between its BEGIN/END markers, and rewrites only that.
#   write_reliability_section NAME SCRIPT SECTION_FILE
# SECTION_FILE holds the section's text without the markers.
write_reliability_section() {
  local name=$1 script=$2 text=$3 report=RELIABILITY.md
  local begin="<!-- BEGIN ${name} (written by ${script}: edit the script, not this section) -->"
  local end="<!-- END ${name} -->"
  local tmp
  tmp=$(mktemp -d)
  { printf '%s\n' "$begin"; cat "$text"; printf '%s\n' "$end"; } >"$tmp/section.md"
  if [ ! -f "$report" ]; then
    printf '# Reliability\n\nHow Polus holds up against bad input and failures. Each section is written by the\nscript it names; a script rewrites only its own section.\n' >"$report"
  fi
  if grep -qF "$begin" "$report"; then
    awk -v begin="$begin" -v end="$end" -v file="$tmp/section.md" '
      $0 == begin { while ((getline line < file) > 0) print line; skip = 1; next }
      $0 == end { skip = 0; next }
      !skip { print }' "$report" >"$tmp/report.md"
    mv "$tmp/report.md" "$report"
  else
    { printf '\n'; cat "$tmp/section.md"; } >>"$report"
  fi
  rm -rf "$tmp"
}
