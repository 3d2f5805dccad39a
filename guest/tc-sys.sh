#!/bin/sh
# tc-sys.sh: site setup run at boot by /opt/bootlocal.sh (installed as
# /root/tc-sys.sh because guest/tc-sys.sh-link points here). POSIX sh,
# busybox applets only. If you override rcS, call this from your rcS.
#
# Networking:
# - eth0 with the magic MAC 00:01:02:03:04:0b means "on the host's tap
#   bridge" (br-vm, host 10.0.2.2): nobody serves DHCP there, so configure
#   the address QEMU's user network would have handed out, statically.
# - any other MAC (QEMU user networking, Akaros' NAT, a cloud): DHCP.

IFACE=${IFACE:-eth0}
MAGIC_MAC=00:01:02:03:04:0b
ADDR4=10.0.2.15/24
GATEWAY4=10.0.2.2
ADDR6=fd0:1234:4321::15/64	# the host bridge has fd0:1234:4321::2/64
# 10.0.2.3 is DNS only on QEMU's user network (slirp); on the tap bridge
# nothing answers there (the host is 10.0.2.2 and its own resolver usually
# listens on 127.0.0.53 only), so use a public resolver the host NATs to.
NAMESERVER=8.8.8.8
CARRIER_WAIT=${CARRIER_WAIT:-10}	# seconds
DHCP_WAIT=${DHCP_WAIT:-10}	# seconds
# Overridable so the script can be tested on a host with a fake sysfs.
SYS_NET=${SYS_NET:-/sys/class/net}
RESOLV_CONF=${RESOLV_CONF:-/etc/resolv.conf}

log() {
	echo "tc-sys.sh: $*"
}

net_dir=$SYS_NET/$IFACE
if [ ! -d "$net_dir" ]; then
	log "no $IFACE; no network setup"
	exit 0
fi

mac=$(cat "$net_dir/address" 2>/dev/null)

if [ "$mac" != "$MAGIC_MAC" ]; then
	# tc-config normally starts udhcpc already; do not start a second one.
	if ! pidof udhcpc >/dev/null 2>&1; then
		log "$IFACE ($mac): DHCP"
		udhcpc -b -i "$IFACE" -x hostname:box -p "/var/run/udhcpc.$IFACE.pid" >/dev/null 2>&1
	fi
	# "Ready" (the end of bootlocal.sh) should mean reachable: wait, bounded,
	# for the lease, which udhcpc's event script marks by writing resolv.conf.
	i=0
	while [ ! -s "$RESOLV_CONF" ]; do
		if [ "$i" -ge "$DHCP_WAIT" ]; then
			log "no DHCP lease on $IFACE after ${DHCP_WAIT}s; going on"
			break
		fi
		sleep 1
		i=$((i + 1))
	done
	exit 0
fi

log "$IFACE has the magic MAC $mac: static $ADDR4"

# tc-config's udhcpc would keep retrying and could later replace our address.
for pid in $(pidof udhcpc); do
	kill "$pid" 2>/dev/null
done

ip link set dev "$IFACE" up

# The link needs a moment after "up" (and the tap must be up on the host);
# bounded, so a missing tap does not hang the boot.
i=0
while [ "$(cat "$net_dir/carrier" 2>/dev/null)" != 1 ]; do
	if [ "$i" -ge "$CARRIER_WAIT" ]; then
		log "no carrier on $IFACE after ${CARRIER_WAIT}s; configuring anyway"
		break
	fi
	sleep 1
	i=$((i + 1))
done

ip -4 addr flush dev "$IFACE"
ip addr add "$ADDR4" dev "$IFACE"
ip route add default via "$GATEWAY4" dev "$IFACE" 2>/dev/null ||
	ip route replace default via "$GATEWAY4" dev "$IFACE"
ip -6 addr add "$ADDR6" dev "$IFACE" 2>/dev/null ||
	log "could not add $ADDR6 (no IPv6 in this kernel?)"
echo "nameserver $NAMESERVER" >"$RESOLV_CONF"
exit 0
