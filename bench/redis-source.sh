# Sourced by the redis bench scripts: Debian's redis 7.0.15 source (with its security fixes in
# debian/patches) unpacked in the current directory, and tcl for redis's own tests.
#   fetch_redis_source        (needs root: apt)
fetch_redis_source() {
  command -v tclsh >/dev/null || apt-get install -y -qq tcl >/dev/null
  if [ ! -f /etc/apt/sources.list.d/polus-deb-src.sources ]; then
    printf '\n==> %s\n' "enabling deb-src for the configured suites"
    sed -e 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
      > /etc/apt/sources.list.d/polus-deb-src.sources
    apt-get update -qq
  fi
  if [ ! -d redis-7.0.15 ]; then
    printf '\n==> %s\n' "apt-get source redis"
    apt-get source -qq redis
  fi
}
