#!/usr/bin/env bash
# Test hosts on one machine: N network namespaces on one Linux bridge, each with its own address,
# and a host name per namespace in /etc/hosts (the namespaces share the kernel's hostname, so
# launchers must address nodes by these names/addresses, never by `hostname`).
#
#   netns.sh up   PREFIX SUBNET N   e.g. `netns.sh up marns 10.77.1 2` gives namespaces marns0,
#                                   marns1 with addresses 10.77.1.10, 10.77.1.11 (names marns0,
#                                   marns1 in /etc/hosts) and the bridge marnsbr at 10.77.1.1 in
#                                   the root namespace
#   netns.sh down PREFIX            removes the namespaces, the bridge and the /etc/hosts lines
#
# Only addresses of the project's own namespaces are used (the subnet is private and never
# routed off the machine). Each namespace gets a resolv.conf that fails at once
# (/etc/netns/NS/resolv.conf, bind-mounted by `ip netns exec`): the host's DNS server is not
# reachable from inside a namespace, and torch's c10d TCPStore reverse-resolves ::1 and
# v4-mapped peer addresses that /etc/hosts does not list, so every store connection would stall
# ~10 s (5 s resolver timeout x 2 attempts). A real cluster has DNS. /etc/hosts lines carry a "# megatron_ar-netns PREFIX" tag, so teardown
# removes exactly what set-up added. Needs root (CAP_NET_ADMIN) and iproute2.
set -euo pipefail
cmd=${1:?usage: netns.sh up PREFIX SUBNET N | down PREFIX}
prefix=${2:?PREFIX}
tag="# megatron_ar-netns ${prefix}"

down() {
  local ns
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${prefix}[0-9]+$" || true); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "/etc/netns/${ns}"
  done
  ip link del "${prefix}br" 2>/dev/null || true
  if grep -q -- "$tag" /etc/hosts 2>/dev/null; then
    # /etc/hosts is often a bind mount (containers): rewrite in place rather than rename over it
    local kept
    kept=$(grep -v -- "$tag" /etc/hosts || true)
    printf '%s\n' "$kept" > /etc/hosts
  fi
}

up() {
  local subnet=${3:?SUBNET (first three octets)} n=${4:?N} i ns
  down
  ip link add "${prefix}br" type bridge
  ip addr add "${subnet}.1/24" dev "${prefix}br"
  ip link set "${prefix}br" up
  for ((i = 0; i < n; i++)); do
    ns="${prefix}${i}"
    ip netns add "$ns"
    ip link add "${prefix}v${i}" type veth peer name eth0 netns "$ns"
    ip link set "${prefix}v${i}" master "${prefix}br" up
    ip -n "$ns" addr add "${subnet}.$((10 + i))/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    ip -n "$ns" route add default via "${subnet}.1"
    mkdir -p "/etc/netns/${ns}"
    printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' > "/etc/netns/${ns}/resolv.conf"
    printf '%s\t%s %s\n' "${subnet}.$((10 + i))" "$ns" "$tag" >> /etc/hosts
  done
  printf '%s\t%s %s\n' "${subnet}.1" "${prefix}br" "$tag" >> /etc/hosts
}

case "$cmd" in
  up) up "$@" ;;
  down) down ;;
  *) echo "usage: netns.sh up PREFIX SUBNET N | down PREFIX" >&2; exit 2 ;;
esac
