package main

import (
	"encoding/binary"
	"fmt"
	"net"
	"syscall"
)

// replaceRoute is `ip route replace DST via GW` through a raw rtnetlink socket (the image is
// FROM scratch, there is no ip binary).
func replaceRoute(dst *net.IPNet, gw net.IP) error {
	dst4, gw4 := dst.IP.To4(), gw.To4()
	if dst4 == nil || gw4 == nil {
		return fmt.Errorf("IPv4 only")
	}
	ones, _ := dst.Mask.Size()
	fd, err := syscall.Socket(syscall.AF_NETLINK, syscall.SOCK_RAW|syscall.SOCK_CLOEXEC, syscall.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK}); err != nil {
		return err
	}

	// struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type; u32 flags
	body := []byte{syscall.AF_INET, byte(ones), 0, 0, syscall.RT_TABLE_MAIN, syscall.RTPROT_STATIC, syscall.RT_SCOPE_UNIVERSE, syscall.RTN_UNICAST, 0, 0, 0, 0}
	body = appendAttr(body, syscall.RTA_DST, dst4)
	body = appendAttr(body, syscall.RTA_GATEWAY, gw4)

	msg := make([]byte, syscall.NLMSG_HDRLEN, syscall.NLMSG_HDRLEN+len(body))
	ne := binary.NativeEndian
	ne.PutUint32(msg[0:4], uint32(syscall.NLMSG_HDRLEN+len(body)))
	ne.PutUint16(msg[4:6], syscall.RTM_NEWROUTE)
	ne.PutUint16(msg[6:8], syscall.NLM_F_REQUEST|syscall.NLM_F_ACK|syscall.NLM_F_CREATE|syscall.NLM_F_REPLACE)
	ne.PutUint32(msg[8:12], 1) // seq
	msg = append(msg, body...)
	if err := syscall.Sendto(fd, msg, 0, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK}); err != nil {
		return err
	}

	buf := make([]byte, 4096)
	n, _, err := syscall.Recvfrom(fd, buf, 0)
	if err != nil {
		return err
	}
	msgs, err := syscall.ParseNetlinkMessage(buf[:n])
	if err != nil {
		return err
	}
	for _, m := range msgs {
		if m.Header.Type == syscall.NLMSG_ERROR && len(m.Data) >= 4 {
			if errno := int32(ne.Uint32(m.Data[0:4])); errno != 0 {
				return syscall.Errno(-errno)
			}
			return nil
		}
	}
	return fmt.Errorf("no netlink acknowledgement")
}

func appendAttr(b []byte, typ uint16, data []byte) []byte {
	l := syscall.SizeofRtAttr + len(data)
	hdr := make([]byte, syscall.SizeofRtAttr)
	binary.NativeEndian.PutUint16(hdr[0:2], uint16(l))
	binary.NativeEndian.PutUint16(hdr[2:4], typ)
	b = append(b, hdr...)
	b = append(b, data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}
