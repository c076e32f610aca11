package ssh

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// target is one parsed [user@]host[:port].
type target struct {
	user string // "" when the target names none
	host string // without brackets for IPv6
	port string // "22" when the target names none
}

// addr is host:port as dialed and as looked up in known_hosts.
func (t target) addr() string { return net.JoinHostPort(t.host, t.port) }

// parseTarget parses [user@]host[:port]. An IPv6 address takes brackets
// when it has a port ([::1]:2222); a bare one (::1) is taken whole.
func parseTarget(s string) (target, error) {
	bad := func(why string) (target, error) {
		return target{}, fmt.Errorf("SSH target %q: %s (want [user@]host[:port])", s, why)
	}
	t := target{port: "22"}
	rest := s
	if i := strings.LastIndex(rest, "@"); i >= 0 {
		t.user, rest = rest[:i], rest[i+1:]
		if t.user == "" {
			return bad("empty user before @")
		}
		if strings.ContainsAny(t.user, " \t\r\n:/") {
			return bad("the user has a space, ':' or '/'")
		}
	}
	switch {
	case strings.HasPrefix(rest, "["):
		host, port, err := net.SplitHostPort(rest)
		if err != nil {
			end := strings.Index(rest, "]")
			if end < 0 || end != len(rest)-1 {
				return bad("unbalanced brackets or junk after ]")
			}
			host, port = rest[1:end], "22"
		}
		t.host, t.port = host, port
	case strings.Count(rest, ":") > 1: // bare IPv6, no port
		t.host = rest
	case strings.Contains(rest, ":"):
		host, port, err := net.SplitHostPort(rest)
		if err != nil {
			return bad(err.Error())
		}
		t.host, t.port = host, port
	default:
		t.host = rest
	}
	if t.host == "" {
		return bad("no host")
	}
	if strings.HasPrefix(t.host, "-") || strings.ContainsAny(t.host, " \t\r\n/@,[]") {
		return bad("the host begins with '-' or has a space, '/', '@', ',' or a bracket")
	}
	if strings.Contains(t.host, ":") && net.ParseIP(t.host) == nil {
		return bad("not an IPv6 address; put a port after the host as host:port")
	}
	if p, err := strconv.Atoi(t.port); err != nil || p < 1 || p > 65535 {
		return bad(fmt.Sprintf("port %q is not a number from 1 to 65535", t.port))
	}
	return t, nil
}

// ParseTargets splits the value of --ssh ("a,root@b,c:2222") into its
// targets: it trims spaces, skips empty items, checks each is
// [user@]host[:port], and drops repeats of a host and port already listed
// (b and b:22 are the same). The same host and port listed with two
// different users is an error: which user to use would be a guess.
func ParseTargets(s string) ([]string, error) {
	var out []string
	seen := map[string]target{}
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		t, err := parseTarget(item)
		if err != nil {
			return nil, err
		}
		key := strings.ToLower(t.addr())
		if prev, ok := seen[key]; ok {
			if prev.user != t.user {
				return nil, fmt.Errorf("SSH target %s is listed twice with different users (%q and %q): list it once", t.addr(), prev.user, t.user)
			}
			continue
		}
		seen[key] = t
		out = append(out, item)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no SSH targets in %q: list hosts as --ssh host1,user@host2,host3:2222", s)
	}
	return out, nil
}
